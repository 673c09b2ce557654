"""The shipped configs parse, and the CPU training config and model card describe the bundled checkpoint."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import yaml

from dglm.checkpoint import TrainableParts, read_checkpoint, render_model_card
from dglm.config import DataConfig, EvalConfig, TrainConfig
from dglm.config_files import read_yaml_mapping
from dglm.errors import DglmError
from dglm.evaluation.harness import check_methods
from dglm.training.stages import same_stage_config

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = ROOT / "dglm" / "default"


TRIALS = sorted((ROOT / "configs" / "trials").glob("*.yaml"))
FLUENCY_TRIALS = {path.stem: path for path in (ROOT / "configs" / "trials" / "fluency").glob("*.yaml")}


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")) + TRIALS + sorted(FLUENCY_TRIALS.values()),
                         ids=lambda p: p.name)
def test_training_configs_parse(path):
    assert TrainConfig.from_yaml(path).prompt_generator.steps > 0


def data_build_outputs() -> set[str]:
    """The file names `dglm data build` says it writes (its modules' docstrings list them)."""
    import re

    from dglm.data import corpus, toxicity

    return set(re.findall(r"[\w-]+\.(?:csv|jsonl|txt)", f"{corpus.__doc__} {toxicity.write_toxicity.__doc__}"))


def check_data_path(path: str, what: str) -> None:
    """A file of the repository must exist; one under data/ (git-ignored) must be one that `dglm data build` writes."""
    if Path(path).parts[0] == "data":
        assert Path(path).name in data_build_outputs(), f"{what} {path} is not a file `dglm data build` writes"
    else:
        assert (ROOT / path).is_file(), f"{what} {path} does not exist"


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "eval").glob("*.yaml")), ids=lambda p: p.name)
def test_eval_configs_name_methods_conditions_and_files_that_exist(path):
    from dglm.evaluation.harness import check_judged, parse_condition
    from dglm.plugins import attribute_terms

    config = EvalConfig.from_yaml(path)
    check_methods(config, str(path))
    assert config.num_samples > 0 and config.conditions
    for condition in config.conditions + ([config.tradeoff_condition] if config.tradeoff_condition else []):
        attribute_terms(parse_condition(condition))  # installed attributes and their labels, or a DglmError
    check_judged(config)
    check_data_path(config.prefixes, "prefix file")
    for name, judge_data in config.judges.items():
        check_data_path(judge_data, f"judge {name!r}'s data")


def test_cpu_training_config_matches_the_bundled_checkpoint():
    """Retraining from configs/train-cpu.yaml must aim at the checkpoint we ship, not at an older one."""
    config = TrainConfig.from_yaml(ROOT / "configs" / "train-cpu.yaml")
    card = json.loads((BUNDLED / "card.json").read_text())
    assert read_checkpoint(BUNDLED)[0] == config.pipeline
    assert same_stage_config(card["denoiser"]["config"], config.denoiser)
    assert same_stage_config(card["prompt_generator"]["config"], config.prompt_generator)
    assert not same_stage_config({**card["prompt_generator"]["config"], "anchor_share": 0.5}, config.prompt_generator)


def test_bundled_model_card_describes_its_config():
    """The shipped model card must be rendered from the checkpoint's own config and card, not left stale."""
    config, _, card = read_checkpoint(BUNDLED)
    assert (BUNDLED / "README.md").read_text() == render_model_card(config, card)


# What a config that extends another may change: where it writes, how big the models are, how long and in what
# batches and precision it trains, and how much data it reads. Everything else (the adapter, the bag-of-words
# weight, learning rates, sampling and decoding settings, the frozen models) must stay the parent's.
DELIBERATE = {"run_dir", "output", "steps", "batch_size", "warmup", "checkpoint_every", "ema_decay", "precision",
              "bag_of_words_steps", "bag_of_words_batch_size", "max_pairs", "all_pairs_from"}
SIZES = ("pipeline.denoiser.", "pipeline.prompt_generator.", "pipeline.decoder_adapter.")


def leaves(mapping: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in mapping.items():
        if isinstance(value, dict) and value:
            flat.update(leaves(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


EXTENDING = [path for path in sorted((ROOT / "configs").glob("*.yaml")) if "extends" in yaml.safe_load(path.read_text())]


def test_the_gpu_and_long_configs_extend_the_default_recipe():
    assert {path.name for path in EXTENDING} >= {"train-gpu.yaml", "train-long.yaml"}


@pytest.mark.parametrize("path", EXTENDING, ids=lambda p: p.name)
def test_an_extending_config_changes_only_what_it_means_to(path):
    parent_path = path.parent / yaml.safe_load(path.read_text())["extends"]
    child_config, parent_config = TrainConfig.from_yaml(path), TrainConfig.from_yaml(parent_path)
    child, parent = child_config.to_dict(), parent_config.to_dict()
    child_leaves, parent_leaves = leaves(child), leaves(parent)
    changed = {key for key in child_leaves if child_leaves[key] != parent_leaves.get(key)}
    drifted = sorted(key for key in changed if key.split(".")[-1] not in DELIBERATE and not key.startswith(SIZES))
    assert not drifted, f"{path.name} changes {drifted} of {parent_path.name}"
    assert child_config.pipeline.decoder_adapter.rank >= parent_config.pipeline.decoder_adapter.rank, \
        f"{path.name} shrinks or drops the decoder adapter of {parent_path.name}"


@pytest.fixture(scope="module")
def default_decoder():
    from dglm.stages.decoder import SoftPromptDecoder

    return SoftPromptDecoder.load(TrainConfig.from_yaml(ROOT / "configs" / "train-cpu.yaml").pipeline.decoder).model


def lora_parameters(model: torch.nn.Module, adapter) -> int:
    """A LoRA adapter's size: rank x (inputs + outputs) of every targeted linear layer."""
    return sum(adapter.rank * (module.in_features + module.out_features) for name, module in model.named_modules()
               if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in adapter.targets)


@pytest.mark.integration
def test_lora_parameters_counts_what_the_bundled_adapter_holds(default_decoder):
    bundled_config, bundled_state, _ = read_checkpoint(BUNDLED)
    bundled = sum(t.numel() for key, t in bundled_state.items() if key.startswith("decoder_adapter."))
    assert lora_parameters(default_decoder, bundled_config.decoder_adapter) == bundled


@pytest.mark.integration
@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("train-*.yaml")), ids=lambda p: p.name)
def test_every_training_config_keeps_its_checkpoint_within_40_mb(path, default_decoder):
    """The default ships inside the package: fp16 parts plus the decoder adapter."""
    config = TrainConfig.from_yaml(path)
    parts_bytes = sum(t.numel() * 2 for t in TrainableParts(config.pipeline).state_dict().values())
    assert parts_bytes + 2 * lora_parameters(default_decoder, config.pipeline.decoder_adapter) <= 40e6


def test_extends_merges_key_by_key_and_refuses_cycles(tmp_path):
    (tmp_path / "base.yaml").write_text("seed: 1\ndenoiser: {steps: 10, batch_size: 4}\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\ndenoiser: {steps: 20}\n")
    config = TrainConfig.from_yaml(tmp_path / "child.yaml")
    assert (config.seed, config.denoiser.steps, config.denoiser.batch_size) == (1, 20, 4)
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\n")
    with pytest.raises(DglmError, match="extends itself"):
        read_yaml_mapping(tmp_path / "loop.yaml", "training")
    (tmp_path / "orphan.yaml").write_text("extends: missing.yaml\n")
    with pytest.raises(DglmError, match="missing.yaml does not exist"):
        TrainConfig.from_yaml(tmp_path / "orphan.yaml")


@pytest.mark.parametrize("text, message", [
    ("denoiser: {steps: many}", r"denoiser.steps must be an integer, got 'many'"),
    ("denoiser: {steps: 2.5}", r"denoiser.steps must be an integer, got 2.5"),
    ("denoiser: {learning_rate: fast}", r"denoiser.learning_rate must be a number, got 'fast'"),
    ("data: {all_pairs_from: reviews}", r"data.all_pairs_from must be a list, got 'reviews'"),
    ("prompt_generator: {source_weights: {reviews: lots}}", r"source_weights.reviews must be a number"),
    ("pipeline: {denoiser: {layers: true}}", r"pipeline.denoiser.layers must be an integer, got True"),
    ("denoiser: {precision: fp8}", r"denoiser.precision must be one of fp32, bf16, got 'fp8'"),
    ("seed: [1]", r"seed must be an integer"),
])
def test_yaml_values_are_type_checked_naming_file_and_key(tmp_path, text, message):
    path = tmp_path / "typo.yaml"
    path.write_text(text + "\n")
    with pytest.raises(DglmError, match=message) as error:
        TrainConfig.from_yaml(path)
    assert str(error.value).startswith(str(path))


@pytest.mark.parametrize("path", TRIALS, ids=lambda p: p.name)
def test_a_lever_trial_draws_the_long_runs_batches(path):
    """A trial is read batch for batch against the baseline (benchmarks/studies/lever_trials.py): it shares the long run's
    seed, data and training settings, and changes the pipeline of the config it extends (its lever; the
    baseline's is the long run's). A prompt-generator trial may shorten the denoiser stage, which it does not
    use; a denoiser trial keeps it whole, since the learning-rate schedule follows the stage's total steps."""
    trial, long_run = TrainConfig.from_yaml(path), TrainConfig.from_yaml(ROOT / "configs" / "train-long.yaml")
    assert (trial.seed, trial.data, trial.prompt_generator) == (long_run.seed, long_run.data, long_run.prompt_generator)
    if trial.pipeline.denoiser == long_run.pipeline.denoiser:
        assert dataclasses.replace(trial.denoiser, steps=long_run.denoiser.steps) == long_run.denoiser
    else:
        assert trial.denoiser == long_run.denoiser
    assert trial.pipeline != TrainConfig.from_yaml(path.parent / yaml.safe_load(path.read_text())["extends"]).pipeline
    assert trial.run_dir != long_run.run_dir and trial.output != long_run.output


def test_the_fluency_trials_differ_in_their_targets_and_the_anchor_alone():
    """Read side by side, the three trials must start from the same weights and draw the same batches: the
    decoder-written file holds the default's pairs in their order, so only the targets (then the anchor) differ."""
    real, decoder, anchored = (TrainConfig.from_yaml(FLUENCY_TRIALS[name])
                               for name in ("real-targets", "decoder-targets", "decoder-targets-anchor"))
    default = TrainConfig.from_yaml(ROOT / "configs" / "train-cpu.yaml")
    assert real.init_from == "dglm/default" and real.pipeline == default.pipeline
    # the first pairs of the default's data, as many as the steps draw, so that the distilled file needs no more
    assert real.data == DataConfig(train=default.data.train, max_pairs=8000)
    assert real.data.max_pairs >= real.prompt_generator.steps * real.prompt_generator.batch_size
    for trial in (decoder, anchored):
        assert (trial.seed, trial.pipeline, trial.init_from) == (real.seed, real.pipeline, real.init_from)
        assert trial.data == DataConfig(train="data/pairs-distilled.jsonl", max_pairs=real.data.max_pairs)
    assert decoder.prompt_generator == real.prompt_generator and real.prompt_generator.anchor_share == 0
    assert dataclasses.replace(anchored.prompt_generator, anchor_share=0.0, anchor_weight=0.0) == real.prompt_generator
    assert anchored.prompt_generator.anchor_share > 0 and anchored.prompt_generator.anchor_weight > 0
    assert len({trial.run_dir for trial in (real, decoder, anchored)} | {default.run_dir}) == 4


def test_the_later_fluency_trials_change_one_thing_of_the_decoder_written_trial():
    """Rebalanced by label (the weight the balance report proposes), half real targets, or the nearest of several
    decoder-written candidates (then with the real continuation's latent), and nothing else."""
    decoder, balanced, mixed, nearest, real_latents = (TrainConfig.from_yaml(FLUENCY_TRIALS[name]) for name in (
        "decoder-targets", "decoder-targets-balanced", "mixed-targets", "nearest-targets", "nearest-targets-real-latents"))
    assert balanced.prompt_generator.label_weights == {"sentiment": {"negative": 1.46}}
    assert dataclasses.replace(balanced.prompt_generator, label_weights={}) == decoder.prompt_generator
    assert balanced.data == decoder.data
    assert mixed.data == dataclasses.replace(decoder.data, mix_targets_from=TrainConfig().data.train, mix_share=0.5)
    assert nearest.data == dataclasses.replace(decoder.data, train="data/pairs-nearest.jsonl")
    assert real_latents.data == dataclasses.replace(nearest.data, latent_from="real_continuation")
    assert mixed.prompt_generator == decoder.prompt_generator == nearest.prompt_generator == real_latents.prompt_generator
    for trial in (balanced, mixed, nearest, real_latents):
        assert (trial.seed, trial.pipeline, trial.init_from) == (decoder.seed, decoder.pipeline, decoder.init_from)
    assert len({trial.run_dir for trial in (decoder, balanced, mixed, nearest, real_latents)}) == 5
