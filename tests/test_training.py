"""Both training stages run, resume, and produce a loadable checkpoint (tiny models, few steps)."""

import json

import pytest
import yaml

from dglm.errors import DglmError
from dglm.pipeline import Pipeline
from dglm.training import TrainConfig, train_denoiser, train_prompt_generator

from conftest import toy_sentences


@pytest.fixture
def train_config(tiny_config, tmp_path):
    sentences = toy_sentences(64, seed=3)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prefix": s[:12], "continuation": " " + s[12:]}) + "\n" for s in sentences))
    data = {
        "run_dir": str(tmp_path / "run"),
        "output": str(tmp_path / "checkpoint"),
        "pipeline": tiny_config.to_dict(),
        "data": {"train": str(pairs)},
        "denoiser": {"steps": 6, "batch_size": 8, "warmup": 2, "checkpoint_every": 3},
        "prompt_generator": {"steps": 3, "batch_size": 2, "warmup": 1, "checkpoint_every": 2},
    }
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_training_both_stages_writes_a_loadable_checkpoint(train_config):
    config = TrainConfig.from_yaml(train_config)
    with pytest.raises(DglmError, match="train the denoiser first"):
        train_prompt_generator(config, str(train_config))
    train_denoiser(config, str(train_config))
    output = train_prompt_generator(config, str(train_config))
    card = json.loads((output / "card.json").read_text())
    assert card["denoiser"]["steps"] == 6 and card["prompt_generator"]["steps"] == 3
    assert card["denoiser"]["command"] == f"dglm train denoiser --config {train_config}"
    run_dir = train_config.parent / "run"
    assert (run_dir / "denoiser-loss.png").stat().st_size > 0
    assert (run_dir / "prompt-generator-loss.png").stat().st_size > 0
    pipeline = Pipeline.from_pretrained(output)
    assert len(pipeline.generate("The movie", num_samples=2, seed=0)) == 2


def test_training_resumes_from_its_last_state(train_config):
    config = TrainConfig.from_yaml(train_config)
    config.denoiser.steps = 3
    train_denoiser(config, str(train_config))
    first = json.loads((train_config.parent / "run" / "denoiser-state.json").read_text())
    assert first["step"] == 3 and len(first["losses"]) == 3
    config.denoiser.steps = 5
    train_denoiser(config, str(train_config))
    resumed = json.loads((train_config.parent / "run" / "denoiser-state.json").read_text())
    assert resumed["step"] == 5 and resumed["losses"][:3] == first["losses"] and len(resumed["losses"]) == 5


def test_bad_training_config_is_reported(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("denoiser: {stepz: 3}\n")
    with pytest.raises(DglmError, match="unknown key"):
        TrainConfig.from_yaml(path)
    with pytest.raises(DglmError, match="does not exist"):
        TrainConfig.from_yaml(tmp_path / "none.yaml")
