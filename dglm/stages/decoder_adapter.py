"""An optional LoRA adapter on the decoder (trained through peft), trained jointly with the prompt generator.

A frozen decoder only reads soft prompts as well as its pretraining lets it; a small adapter on its
attention projections teaches it to *listen* to them, which the reference got by fine-tuning the whole
decoder. The adapter's weights live in the pipeline checkpoint under `decoder_adapter.` and are merged
into the decoder's weights when a pipeline is loaded, so generation costs exactly what plain sampling does.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from dglm.config import AdapterConfig
from dglm.errors import DglmError

ADAPTER_PREFIX = "decoder_adapter."


def split_adapter(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A checkpoint's tensors as (the pipeline parts' state, the decoder adapter's weights)."""
    adapter = {key: value for key, value in state.items() if key.startswith(ADAPTER_PREFIX)}
    return {key: value for key, value in state.items() if key not in adapter}, adapter


def add_adapter(model: nn.Module, config: AdapterConfig) -> list[nn.Parameter]:
    """Inject fresh LoRA layers into `model` (a no-op at first: B starts at zero); return their parameters."""
    from peft import LoraConfig, inject_adapter_in_model

    lora = LoraConfig(r=config.rank, lora_alpha=config.alpha, target_modules=list(config.targets), lora_dropout=0.0)
    try:
        inject_adapter_in_model(lora, model)
    except ValueError as error:
        raise DglmError(f"cannot add a LoRA adapter on {list(config.targets)}: {str(error).splitlines()[0]}") from None
    return [p for name, p in model.named_parameters() if "lora_" in name]


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's weights, keyed for a checkpoint (`decoder_adapter.` + peft's names)."""
    from peft.utils import get_peft_model_state_dict

    return {ADAPTER_PREFIX + key: value for key, value in get_peft_model_state_dict(model).items()}


def set_adapter_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a checkpoint's adapter weights (keyed `decoder_adapter.*`) into the LoRA layers injected in `model`."""
    from peft.utils import set_peft_model_state_dict

    weights = {key[len(ADAPTER_PREFIX):]: value.float() for key, value in state.items()}
    result = set_peft_model_state_dict(model, weights)
    missing = [key for key in result.missing_keys if "lora_" in key]
    if missing or result.unexpected_keys:
        raise DglmError(
            f"the checkpoint's decoder adapter does not fit decoder {type(model).__name__}: "
            f"{len(missing)} adapter weights missing, {len(result.unexpected_keys)} unexpected"
        )


def load_adapter(model: nn.Module, config: AdapterConfig, state: dict[str, torch.Tensor], scale: float = 1.0) -> None:
    """Merge a checkpoint's adapter (keyed `decoder_adapter.*`) into the decoder's own weights, leaving an ordinary
    model that generates exactly as fast as the original: each target's weight gains scale * alpha / rank * B @ A,
    computed as peft merges it (a test checks bit for bit) without importing peft, which costs about half a second of
    every start (NOTEBOOK, "Start-up").

    `scale` multiplies the adapter's update before merging (as a LoRA scale does elsewhere): 1 is the decoder as
    trained, 0 the decoder as published; in between trades the decoder's fidelity to the latent for fluency.
    """
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        layer, sep, part = key[len(ADAPTER_PREFIX):].rpartition(".lora_")
        if sep and part in ("A.weight", "B.weight"):
            pairs.setdefault(layer, {})[part[0]] = value.float()
    targets = {name for name, _ in model.named_modules() if name.rsplit(".", 1)[-1] in config.targets}
    complete = {layer for layer, pair in pairs.items() if pair.keys() == {"A", "B"}}
    if complete != targets or len(pairs) != len(state) / 2:
        raise DglmError(f"the checkpoint's decoder adapter does not fit decoder {type(model).__name__}: "
                        f"{len(targets - complete)} adapted layers missing, {len(set(pairs) - targets)} unexpected")
    with torch.no_grad():
        for layer in sorted(targets):
            module = model.get_submodule(layer)
            delta = (pairs[layer]["B"] * scale) @ pairs[layer]["A"]
            if type(module).__name__ == "Conv1D":  # GPT-2 stores its projections transposed (peft's fan_in_fan_out)
                delta = delta.T
            update = delta * (config.alpha / config.rank)
            module.weight += update.to(device=module.weight.device, dtype=module.weight.dtype)


@contextmanager
def adapter_disabled(model: nn.Module) -> Iterator[None]:
    """Run `model` as published: its injected (unmerged) LoRA layers switched off, and on again after."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [module for module in model.modules() if isinstance(module, BaseTunerLayer)]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)
