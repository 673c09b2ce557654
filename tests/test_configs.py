"""The shipped configs parse, and the CPU training config and model card describe the bundled checkpoint."""

import dataclasses
import json
from pathlib import Path

import pytest

from dglm.eval_harness import EvalConfig
from dglm.pipeline import read_checkpoint, render_model_card
from dglm.training import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = ROOT / "dglm" / "default"


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_training_configs_parse(path):
    assert TrainConfig.from_yaml(path).prompt_generator.steps > 0


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "eval").glob("*.yaml")), ids=lambda p: p.name)
def test_eval_configs_parse(path):
    assert EvalConfig.from_yaml(path).num_samples > 0


def test_cpu_training_config_matches_the_bundled_checkpoint():
    """Retraining from configs/train-cpu.yaml must aim at the checkpoint we ship, not at an older one."""
    config = TrainConfig.from_yaml(ROOT / "configs" / "train-cpu.yaml")
    card = json.loads((BUNDLED / "card.json").read_text())
    assert json.loads((BUNDLED / "config.json").read_text()) == config.pipeline.to_dict()
    assert card["denoiser"]["config"] == dataclasses.asdict(config.denoiser)
    assert card["prompt_generator"]["config"] == dataclasses.asdict(config.prompt_generator)


def test_bundled_model_card_describes_its_config():
    """The shipped model card must be rendered from the checkpoint's own config and card, not left stale."""
    config, _, card = read_checkpoint(BUNDLED)
    assert (BUNDLED / "README.md").read_text() == render_model_card(config, card)
