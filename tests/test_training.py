"""Both training stages run, resume, and produce a loadable checkpoint (tiny models, few steps)."""

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from conftest import toy_sentences

from dglm.config import AdapterConfig, DataConfig, TrainConfig
from dglm.data.pairs import pair_weights, select_pairs
from dglm.errors import DglmError
from dglm.pipeline import Pipeline
from dglm.training.stages import encoded_pairs, train_denoiser, train_prompt_generator


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


class StopAfter:
    """A training leg that ends after `calls` checks, as a time limit or SIGTERM would end it."""

    def __init__(self, calls: int):
        self.calls = calls

    def expired(self) -> bool:
        self.calls -= 1
        return self.calls < 0


def checkpoint_tensors(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def config_in(train_config, name: str, **stages) -> TrainConfig:
    config = TrainConfig.from_yaml(train_config)
    config.run_dir, config.output = str(train_config.parent / name / "run"), str(train_config.parent / name / "out")
    config.pipeline.decoder_adapter = AdapterConfig(rank=2, targets=["c_attn"])
    for stage, values in stages.items():
        for key, value in values.items():
            setattr(getattr(config, stage), key, value)
    return config


def test_a_run_split_in_two_legs_equals_the_same_run_done_at_once(train_config):
    """Same batches, weights, optimizer moments, EMA and learning-rate schedule: a resumed run continues exactly."""
    straight = config_in(train_config, "straight", prompt_generator={"bag_of_words_steps": 2})
    train_denoiser(straight, "straight.yaml")
    train_prompt_generator(straight, "straight.yaml")

    legs = config_in(train_config, "legs", prompt_generator={"bag_of_words_steps": 2})
    train_denoiser(legs, "legs.yaml", StopAfter(4))
    assert json.loads((legs.run_path / "denoiser-state.json").read_text())["step"] == 4
    card = json.loads((Path(legs.output) / "card.json").read_text())
    assert card["denoiser"]["steps"] == 4  # a cut leg leaves a checkpoint that can be kept
    train_denoiser(legs, "legs.yaml")
    train_prompt_generator(legs, "legs.yaml", StopAfter(3))  # 2 bag-of-words steps, then 1 joint step
    assert json.loads((legs.run_path / "prompt-generator-state.json").read_text())["step"] == 1
    train_prompt_generator(legs, "legs.yaml")

    for stage in ("denoiser", "prompt-generator"):
        once = json.loads((straight.run_path / f"{stage}-state.json").read_text())
        split = json.loads((legs.run_path / f"{stage}-state.json").read_text())
        assert split["losses"] == once["losses"] and split["step"] == once["step"]
    expected, actual = checkpoint_tensors(Path(straight.output)), checkpoint_tensors(Path(legs.output))
    assert expected.keys() == actual.keys() and any(key.startswith("decoder_adapter.") for key in actual)
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


def test_a_resume_with_another_total_of_steps_is_refused(train_config):
    config = config_in(train_config, "total")
    train_denoiser(config, "total.yaml", StopAfter(2))
    config.denoiser.steps = 9
    with pytest.raises(DglmError, match="saved by a run of 6 steps, but the config asks for 9"):
        train_denoiser(config, "total.yaml")


def test_a_lost_resume_state_continues_from_the_checkpoint_and_says_so(train_config):
    config = config_in(train_config, "lost")
    train_denoiser(config, "lost.yaml")
    train_prompt_generator(config, "lost.yaml", StopAfter(2))
    adapter_after_leg = {k: v for k, v in checkpoint_tensors(Path(config.output)).items() if k.startswith("decoder_adapter.")}
    for path in config.run_path.glob("prompt-generator-state.*"):
        path.unlink()
    train_prompt_generator(config, "lost.yaml", StopAfter(0))  # restarts at step 2 from the checkpoint, trains nothing
    card = json.loads((Path(config.output) / "card.json").read_text())
    assert card["prompt_generator"]["steps"] == 2
    assert card["prompt_generator"]["restarted_without_optimizer_state_at"] == [2]
    reloaded = checkpoint_tensors(Path(config.output))
    assert all(torch.equal(reloaded[k], v) for k, v in adapter_after_leg.items())  # the adapter was carried over
    train_prompt_generator(config, "lost.yaml")
    card = json.loads((Path(config.output) / "card.json").read_text())
    assert card["prompt_generator"]["steps"] == 3 and card["prompt_generator"]["restarted_without_optimizer_state_at"] == [2]
    assert "restarted without optimizer state at: [2]" in (Path(config.output) / "README.md").read_text()
    for path in config.run_path.glob("prompt-generator-state.*"):
        path.unlink()
    train_prompt_generator(config, "lost.yaml")  # the checkpoint holds the whole stage: nothing to redo or rewrite
    assert json.loads((Path(config.output) / "card.json").read_text()) == card


def test_bad_training_config_is_reported(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("denoiser: {stepz: 3}\n")
    with pytest.raises(DglmError, match="unknown key"):
        TrainConfig.from_yaml(path)
    with pytest.raises(DglmError, match="does not exist"):
        TrainConfig.from_yaml(tmp_path / "none.yaml")


def test_source_weights_set_how_often_each_pair_is_drawn(tmp_path):
    path = tmp_path / "weighted.yaml"
    path.write_text("prompt_generator: {source_weights: {reviews: 3.0}}\n")
    source_weights = TrainConfig.from_yaml(path).prompt_generator.source_weights
    pairs = [{"source": "news"}, {"source": "reviews"}, {"source": "news"}]
    assert pair_weights(pairs, source_weights).tolist() == [1.0, 3.0, 1.0]
    assert pair_weights(pairs, {}) is None  # uniform draws, as before
    assert pair_weights([{"source": "news"}, {}], {"(none)": 2.0}).tolist() == [1.0, 2.0]  # pairs without a source
    with pytest.raises(DglmError, match=r"unknown source\(s\) \['tweets'\].*have: \['news', 'reviews'\]"):
        pair_weights(pairs, {"tweets": 2.0})
    with pytest.raises(DglmError, match="positive numbers"):
        pair_weights(pairs, {"news": 0})


def test_label_weights_draw_pairs_by_the_label_a_probe_reads_in_their_continuation(tmp_path):
    from dglm.plugins import get_attributes
    from dglm.training.distill import label_pair_weights

    path = tmp_path / "weighted.yaml"
    path.write_text("prompt_generator: {label_weights: {sentiment: {negative: 1.5}}}\n")
    label_weights = TrainConfig.from_yaml(path).prompt_generator.label_weights
    probe = get_attributes()["sentiment"].probe
    direction = probe.linear.weight[probe.labels.index("positive")] - probe.linear.weight[probe.labels.index("negative")]
    direction = direction / direction.norm()
    embeddings = torch.stack([direction, -direction, direction])  # read positive, negative, positive
    encoder = probe.card["encoder"]
    assert label_pair_weights(embeddings, label_weights, encoder).tolist() == [1.0, 1.5, 1.0]
    with pytest.raises(DglmError, match="labels of"):
        label_pair_weights(embeddings, {"sentiment": {"gloomy": 2.0}}, encoder)
    with pytest.raises(DglmError, match="not installed; installed: .*sentiment"):
        label_pair_weights(embeddings, {"mood": {"sad": 2.0}}, encoder)
    with pytest.raises(DglmError, match="train a probe on that encoder"):
        label_pair_weights(embeddings, label_weights, "another-encoder")


def test_the_prompt_generator_stage_reads_its_pairs_with_the_label_weights_probe(train_config):
    config = config_in(train_config, "labels")
    train_denoiser(config, "labels.yaml")
    config.prompt_generator.label_weights = {"sentiment": {"negative": 2.0}}
    with pytest.raises(DglmError, match="encoder .* for prompt_generator.label_weights"):  # the tiny encoder is not MiniLM
        train_prompt_generator(config, "labels.yaml")


def test_all_pairs_from_keeps_a_whole_source_past_max_pairs(tmp_path):
    path = tmp_path / "pairs.jsonl"
    sources = ["news", "reviews", "news", "news", "reviews", "news"]
    path.write_text("".join(json.dumps({"prefix": f"p{i}", "continuation": f"c{i}", "source": s}) + "\n"
                            for i, s in enumerate(sources)))
    assert [p["prefix"] for p in select_pairs(DataConfig(str(path), max_pairs=2))] == ["p0", "p1"]
    kept = select_pairs(DataConfig(str(path), max_pairs=2, all_pairs_from=["reviews"]))
    assert [p["prefix"] for p in kept] == ["p0", "p1", "p4"]
    assert len(select_pairs(DataConfig(str(path), all_pairs_from=["reviews"]))) == 6  # no limit: every pair
    with pytest.raises(DglmError, match=r"unknown source\(s\) \['tweets'\].*has: \['news', 'reviews'\]"):
        select_pairs(DataConfig(str(path), max_pairs=2, all_pairs_from=["tweets"]))
    with pytest.warns(UserWarning, match="holds 6 pairs, fewer than max_pairs \\(8\\)"):  # e.g. a file still being written
        assert len(select_pairs(DataConfig(str(path), max_pairs=8))) == 6


def test_mixed_targets_take_a_share_of_continuations_from_the_other_file_line_by_line(tmp_path):
    written, real = tmp_path / "written.jsonl", tmp_path / "real.jsonl"
    sources = ["news"] * 150 + ["reviews"] * 50
    for path, kind in ((written, "written"), (real, "real")):
        path.write_text("".join(json.dumps({"prefix": f"p{i}", "continuation": f"{kind} {i}", "source": s}) + "\n"
                                for i, s in enumerate(sources)))
    data = DataConfig(str(written), max_pairs=100, all_pairs_from=["reviews"], mix_targets_from=str(real), mix_share=0.3)
    mixed = select_pairs(data)
    assert len(mixed) == 150
    # every pair keeps its own prefix's continuation, from one file or the other, past max_pairs too
    assert all(p["continuation"].split()[1] == p["prefix"][1:] for p in mixed)
    taken = [p for p in mixed if p["continuation"].startswith("real")]
    assert 0.2 < len(taken) / len(mixed) < 0.4
    assert select_pairs(data) == mixed  # the same pairs every run
    assert all(p["continuation"].startswith("real") for p in select_pairs(dataclasses.replace(data, mix_share=1.0)))
    real.write_text(real.read_text().replace('"p7"', '"another prefix"'))
    with pytest.raises(DglmError, match="line 8 does not continue the prefix"):
        select_pairs(dataclasses.replace(data, mix_share=1.0))
    for share in (1.5, 0.0):  # a file to mix in with no share would silently not be mixed in
        with pytest.raises(DglmError, match=r"mix_share must be in \(0, 1\]"):
            select_pairs(dataclasses.replace(data, mix_share=share))


def test_embedding_cache_is_never_shared_between_selections_of_the_same_size(train_config):
    config = TrainConfig.from_yaml(train_config)
    pairs = select_pairs(config.data)
    (train_config.parent / "run").mkdir()
    first, _ = encoded_pairs(config, pairs[:4])
    other, _ = encoded_pairs(config, pairs[4:8])
    assert len(list((train_config.parent / "run").glob("embeddings-4-*.safetensors"))) == 2
    assert not torch.equal(first, other)


def test_a_decoder_adapter_is_trained_saved_and_merged_exactly(train_config, tmp_path):
    from peft.utils import set_peft_model_state_dict

    from dglm.config import AdapterConfig
    from dglm.stages.decoder_adapter import ADAPTER_PREFIX, add_adapter
    from dglm.stages.pretrained import load_causal_lm

    config = TrainConfig.from_yaml(train_config)
    config.pipeline.decoder_adapter = AdapterConfig(rank=2, targets=["c_attn"])
    config.prompt_generator.adapter_learning_rate = 0.05
    config.prompt_generator.bag_of_words_weight = 0.5
    config.prompt_generator.bag_of_words_steps = 2
    train_denoiser(config, str(train_config))
    output = train_prompt_generator(config, str(train_config))
    assert "rank-2 LoRA adapter" in (output / "README.md").read_text()
    assert (train_config.parent / "run" / "prompt-generator-words-loss.png").stat().st_size > 0

    pipeline = Pipeline.from_pretrained(output)
    assert pipeline.adapter and all(key.startswith(ADAPTER_PREFIX) for key in pipeline.adapter)
    assert not any("lora_" in name for name, _ in pipeline.decoder.model.named_parameters())  # merged, then removed

    # The merged decoder computes what the base decoder plus the (unmerged) adapter computes.
    adapted, _ = load_causal_lm(config.pipeline.decoder)
    add_adapter(adapted, config.pipeline.decoder_adapter)
    set_peft_model_state_dict(adapted, {k[len(ADAPTER_PREFIX):]: v.float() for k, v in pipeline.adapter.items()})
    tokens = torch.tensor([[5, 17, 42, 9]])
    with torch.no_grad():
        merged_logits = pipeline.decoder.model(input_ids=tokens).logits
        assert torch.allclose(merged_logits, adapted(input_ids=tokens).logits, atol=1e-4)
        plain_logits = pipeline.plain_decoder().model(input_ids=tokens).logits
        assert not torch.allclose(merged_logits, plain_logits, atol=1e-4)  # the baselines' decoder is untouched

    resaved = Pipeline.from_pretrained(pipeline.save_pretrained(tmp_path / "resaved"))
    with torch.no_grad():
        assert torch.allclose(resaved.decoder.model(input_ids=tokens).logits, merged_logits, atol=1e-4)

    # A scaled adapter moves the decoder's weights that fraction of the way; scale 0 is the published decoder.
    def attention_weight(p: Pipeline) -> torch.Tensor:
        return p.decoder.model.get_submodule("transformer.h.0.attn.c_attn").weight

    plain_weight = pipeline.plain_decoder().model.get_submodule("transformer.h.0.attn.c_attn").weight
    half = Pipeline.from_pretrained(output, adapter_scale=0.5)
    assert torch.allclose(attention_weight(half) - plain_weight, (attention_weight(pipeline) - plain_weight) / 2, atol=1e-6)
    assert torch.equal(attention_weight(Pipeline.from_pretrained(output, adapter_scale=0.0)), plain_weight)
    # In bfloat16, the adapter is merged in float32 first and the sum rounded once; the baselines' decoder is rounded
    # alike, so that they decode in the same format.
    rounded = Pipeline.from_pretrained(output, dtype="bfloat16")
    assert torch.equal(attention_weight(rounded), attention_weight(pipeline).to(torch.bfloat16))
    assert rounded.plain_decoder().dtype == torch.bfloat16
    with pytest.raises(DglmError, match=r"adapter scale must be a number in \[0, 1\], got 1.5"):
        Pipeline.from_pretrained(output, adapter_scale=1.5)


def test_a_checkpoint_missing_its_declared_adapter_is_reported(tiny_checkpoint, tmp_path):
    import shutil

    folder = tmp_path / "no-adapter"
    shutil.copytree(tiny_checkpoint, folder)
    config = json.loads((folder / "config.json").read_text())
    config["decoder_adapter"]["rank"] = 4
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(DglmError, match="declares a decoder adapter"):
        Pipeline.from_pretrained(folder)


def test_train_all_runs_both_stages_and_print_config_resolves(train_config, capsys):
    from dglm.cli import main

    assert main(["train", "all", "--config", str(train_config), "--print-config"]) == 0
    resolved = json.loads(capsys.readouterr().out)
    assert resolved["denoiser"]["steps"] == 6 and resolved["prompt_generator"]["precision"] == "fp32"
    assert not (train_config.parent / "checkpoint").exists()  # printing trains nothing
    assert main(["train", "all", "--config", str(train_config)]) == 0
    card = json.loads((train_config.parent / "checkpoint" / "card.json").read_text())
    assert card["denoiser"]["steps"] == 6 and card["prompt_generator"]["steps"] == 3


def test_bf16_training_keeps_fp32_weights_and_writes_a_loadable_checkpoint(train_config):
    config = config_in(train_config, "bf16", denoiser={"precision": "bf16"}, prompt_generator={"precision": "bf16"})
    train_denoiser(config, "bf16.yaml")
    output = train_prompt_generator(config, "bf16.yaml")
    state = json.loads((config.run_path / "prompt-generator-state.json").read_text())
    assert all(math.isfinite(loss) for loss in state["losses"])
    assert len(Pipeline.from_pretrained(output).generate("The movie", num_samples=2, seed=0)) == 2


def test_the_kl_anchor_is_zero_for_the_published_decoder_and_pulls_an_adapter_back_to_it(tiny_config):
    from dglm.config import AdapterConfig
    from dglm.stages.decoder import SoftPromptDecoder
    from dglm.stages.decoder_adapter import adapter_disabled, add_adapter

    decoder = SoftPromptDecoder.load(tiny_config.decoder)
    decoder.model.requires_grad_(False)
    adapter = add_adapter(decoder.model, AdapterConfig(rank=2, targets=["c_attn"]))
    texts = toy_sentences(4, seed=8)
    prefixes, continuations = [t[:10] for t in texts], [" " + t[10:] for t in texts]
    assert decoder.anchor_loss(prefixes, continuations).item() < 1e-6  # LoRA starts as a no-op
    with torch.no_grad():
        for parameter in adapter:
            parameter.add_(0.3 * torch.randn_like(parameter))
    tokens = torch.tensor([[5, 17, 42, 9]])
    with torch.no_grad(), adapter_disabled(decoder.model):
        published = decoder.model(input_ids=tokens).logits
    assert not torch.allclose(decoder.model(input_ids=tokens).logits, published)  # the adapter is back on after
    anchor = decoder.anchor_loss(prefixes, continuations)
    assert anchor.item() > 1e-4
    anchor.backward()
    assert all(parameter.grad is not None for parameter in adapter)


def test_an_anchored_run_draws_the_same_batches_and_says_so_in_its_card(train_config, tmp_path, monkeypatch):
    from dglm.config import AdapterConfig
    from dglm.training.stages import PromptGeneratorStage

    seen: dict[str, list] = {"plain": [], "anchored": []}
    forward = PromptGeneratorStage.forward

    def recording(self, noisy_latents, prefixes, continuations, anchored=False):
        seen[run_name].append((prefixes, continuations, anchored))
        return forward(self, noisy_latents, prefixes, continuations, anchored)

    monkeypatch.setattr(PromptGeneratorStage, "forward", recording)

    def trained(name: str, share: float):
        nonlocal run_name
        run_name = name
        config = TrainConfig.from_yaml(train_config)
        config.run_dir, config.output = str(tmp_path / name / "run"), str(tmp_path / name / "out")
        config.pipeline.decoder_adapter = AdapterConfig(rank=2, targets=["c_attn"])
        config.prompt_generator.adapter_learning_rate = 0.05
        config.prompt_generator.anchor_share, config.prompt_generator.anchor_weight = share, 10.0
        train_denoiser(config, str(train_config))
        return json.loads((train_prompt_generator(config, str(train_config)) / "card.json").read_text())

    run_name = ""
    plain, anchored = trained("plain", 0.0), trained("anchored", 1.0)
    assert "KL to the published decoder on 100% of steps" in anchored["prompt_generator"]["loss"]
    assert "KL" not in plain["prompt_generator"]["loss"]
    assert [batch[:2] for batch in seen["anchored"]] == [batch[:2] for batch in seen["plain"]]
    assert all(batch[2] for batch in seen["anchored"]) and not any(batch[2] for batch in seen["plain"])
    config = TrainConfig.from_yaml(train_config)
    config.prompt_generator.anchor_share, config.prompt_generator.anchor_weight = 0.5, 1.0
    train_denoiser(config, str(train_config))
    with pytest.raises(DglmError, match="decoder_adapter.rank is 0"):
        train_prompt_generator(config, str(train_config))


def test_a_run_from_init_from_fine_tunes_that_checkpoint_instead_of_starting_afresh(train_config, tmp_path):
    from dglm.config import AdapterConfig
    from dglm.stages.decoder_adapter import ADAPTER_PREFIX

    config = TrainConfig.from_yaml(train_config)
    config.pipeline.decoder_adapter = AdapterConfig(rank=2, targets=["c_attn"])
    config.prompt_generator.adapter_learning_rate = 0.05
    train_denoiser(config, str(train_config))
    first = Pipeline.from_pretrained(train_prompt_generator(config, str(train_config)))

    trial = TrainConfig.from_yaml(train_config)
    trial.pipeline.decoder_adapter = config.pipeline.decoder_adapter
    trial.run_dir, trial.output, trial.init_from = str(tmp_path / "trial-run"), str(tmp_path / "trial"), config.output
    trial.prompt_generator.steps, trial.prompt_generator.learning_rate = 1, 1e-12  # one step that barely moves
    trial.prompt_generator.adapter_learning_rate = 1e-12
    tuned = Pipeline.from_pretrained(train_prompt_generator(trial, "trial.yaml"))
    card = json.loads((tmp_path / "trial" / "card.json").read_text())
    assert card["prompt_generator"]["steps"] == 1 and card["prompt_generator"]["init_from"] == config.output
    inherited = card["denoiser"].pop("inherited_from")
    assert inherited == config.output and card["denoiser"] == json.loads((Path(config.output) / "card.json").read_text())["denoiser"]
    with pytest.raises(DglmError, match="run `dglm train prompt-generator`"):
        train_denoiser(trial, "trial.yaml")
    for key, value in first.adapter.items():  # started from the first run's adapter, not a fresh one
        assert key.startswith(ADAPTER_PREFIX) and torch.allclose(tuned.adapter[key].float(), value.float(), atol=1e-3)
    for (name, value), other in zip(first.parts.prompt_generator.state_dict().items(),
                                    tuned.parts.prompt_generator.state_dict().values()):
        assert torch.allclose(value, other, atol=1e-3), f"{name} was re-initialised"
    trial.output, trial.init_from = str(tmp_path / "other"), str(tmp_path / "nowhere")
    with pytest.raises(DglmError, match="is not a checkpoint folder"):
        train_prompt_generator(trial, "trial.yaml")
