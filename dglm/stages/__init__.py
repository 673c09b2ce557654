"""The stages of generation, one module each: encoder -> (schedule, denoiser, samplers, guidance) ->
prompt generator -> decoder (with its optional adapter); `pretrained` finds and loads the frozen models."""
