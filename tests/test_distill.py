"""Decoder-written targets (`dglm data distill`): one per training pair, from the published decoder with the
checkpoint's decoding and the real continuation's length, resumable, and trainable as a pairs file."""

import dataclasses
import json

import pytest
import torch
import yaml
from conftest import toy_sentences

from dglm.cli import main
from dglm.config import DataConfig, TrainConfig
from dglm.data.pairs import iter_pairs, select_pairs
from dglm.errors import DglmError
from dglm.seeding import sample_generators
from dglm.stages.decoder import SoftPromptDecoder
from dglm.stages.encoder import SentenceEncoder
from dglm.training.distill import distill, nearest_targets, sentiment_balance
from dglm.training.stages import encoded_pairs, train_denoiser


@pytest.fixture
def config_path(tiny_config, tmp_path):
    sentences = toy_sentences(12, seed=5)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prefix": s[:12], "continuation": " " + s[12:],
                                         "source": "reviews" if i % 3 == 0 else "news"}) + "\n"
                             for i, s in enumerate(sentences)))
    data = {"run_dir": str(tmp_path / "run"), "output": str(tmp_path / "checkpoint"), "pipeline": tiny_config.to_dict(),
            "data": {"train": str(pairs), "max_pairs": 8, "all_pairs_from": ["reviews"]},
            "denoiser": {"steps": 2, "batch_size": 4, "warmup": 1, "checkpoint_every": 1}}
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_each_selected_pair_gets_the_decoders_own_continuation_of_its_length_and_keeps_its_source(config_path, tmp_path):
    config = TrainConfig.from_yaml(config_path)
    out = tmp_path / "distilled.jsonl"
    assert distill(config, out, seed=7, batch_size=4) == 9  # the first 8 pairs and the one later review
    written, real = list(iter_pairs(out)), select_pairs(config.data)
    assert [(w["prefix"], w["source"], w["seed"]) for w in written] == [(p["prefix"], p["source"], 7 + k)
                                                                         for k, p in enumerate(real)]
    decoder = SoftPromptDecoder.load(config.pipeline.decoder)
    for k in (5, 8):  # a news pair in the second batch, the review kept past max_pairs in the third
        length = len(decoder.token_ids([real[k]["continuation"]])[0])
        alone = decoder.generate([real[k]["prefix"]], None, sample_generators([7 + k]),
                                 config.pipeline.decoding.updated(max_new_tokens=length))
        assert written[k]["continuation"] == alone[0], "a target is what the published decoder writes alone, as long as the real one"


def test_a_killed_run_resumes_to_the_same_file_and_trains(config_path, tmp_path):
    config = TrainConfig.from_yaml(config_path)
    whole, killed = tmp_path / "whole.jsonl", tmp_path / "killed.jsonl"
    distill(config, whole, batch_size=3)
    distill(config, killed, batch_size=3)
    lines = killed.read_bytes().splitlines(keepends=True)
    killed.write_bytes(b"".join(lines[:4]) + lines[4][:10])  # killed while writing its fifth line
    with pytest.raises(DglmError, match="already holds samples; pass --resume"):
        distill(config, killed, batch_size=3)
    distill(config, killed, batch_size=3, resume=True)
    assert killed.read_bytes() == whole.read_bytes()
    trained = dataclasses.replace(config, data=DataConfig(train=str(whole)))
    card = json.loads((train_denoiser(trained, "distilled") / "card.json").read_text())
    assert card["denoiser"]["sources"] == {"news": 5, "reviews": 4}


def test_the_balance_report_reads_real_and_decoder_written_continuations_alike(config_path, tmp_path, toy_plugin, capsys):
    out = tmp_path / "distilled.jsonl"
    assert main(["data", "distill", "--config", str(config_path), "--out", str(out), "--no-balance"]) == 0
    report = sentiment_balance(TrainConfig.from_yaml(config_path), out, attribute="toy_sentiment")
    assert report["pairs"] == 9 and set(report) == {"pairs", "attribute", "real", "decoder_written"}
    for side in ("real", "decoder_written"):
        assert set(report[side]) == {"all", "news", "reviews"}
        assert abs(sum(report[side]["all"].values()) - 1) < 1e-3


def test_rebalancing_weighs_the_source_richest_in_negative_text_up_to_the_real_share():
    from collections import Counter

    from dglm.training.distill import rebalancing

    by_source = {"news": Counter(negative=10, positive=90), "reviews": Counter(negative=40, positive=60)}
    plan = rebalancing(by_source, target=0.3)
    weight = plan["source_weights"]["reviews"]
    assert abs((10 + weight * 40) / (100 + weight * 100) - 0.3) < 1e-3
    assert rebalancing(by_source, target=0.2) == {"needed": False, "share": 0.25, "target": 0.2}
    by_label = rebalancing(by_source, target=0.5)  # no source is negative half the time: weigh by label instead
    weight = by_label["label_weights"]["sentiment"]["negative"]
    assert "source_weights" not in by_label and abs(weight * 50 / (weight * 50 + 150) - 0.5) < 1e-3
    no_negative = rebalancing({"news": Counter(positive=100)}, target=0.5)  # no weight can make what is not there
    assert "no weight can rebalance" in no_negative["note"] and "label_weights" not in no_negative


def test_several_candidates_a_pair_are_seeded_like_samples_and_the_nearest_to_the_real_continuation_is_kept(config_path, tmp_path):
    config = TrainConfig.from_yaml(config_path)
    drawn, chosen = tmp_path / "candidates.jsonl", tmp_path / "nearest.jsonl"
    assert distill(config, drawn, seed=3, batch_size=5, limit=4, candidates=3) == 12
    lines, real = list(iter_pairs(drawn)), select_pairs(config.data)[:4]
    assert [(line["prefix_index"], line["sample_index"], line["seed"]) for line in lines] == [
        (k, j, 3 + k * 3 + j) for k in range(4) for j in range(3)]
    assert [line["prefix"] for line in lines] == [pair["prefix"] for pair in real for _ in range(3)]
    decoder = SoftPromptDecoder.load(config.pipeline.decoder)
    length = len(decoder.token_ids([real[2]["continuation"]])[0])
    alone = decoder.generate([real[2]["prefix"]], None, sample_generators([3 + 2 * 3 + 1]),
                             config.pipeline.decoding.updated(max_new_tokens=length))
    assert lines[2 * 3 + 1]["continuation"] == alone[0], "candidate 1 of pair 2 is what its recorded seed writes alone"
    assert len({line["continuation"] for line in lines}) > 4, "a pair's candidates are other draws, not copies"

    summary = nearest_targets(config, drawn, chosen)
    kept = list(iter_pairs(chosen))
    encoder = SentenceEncoder(config.pipeline.encoder)
    for k, pair in enumerate(kept):
        own = lines[k * 3: k * 3 + 3]
        cosines = (encoder.encode([c["continuation"] for c in own]) @ encoder.encode([real[k]["continuation"]])[0]).tolist()
        best = max(range(3), key=cosines.__getitem__)
        assert (pair["prefix"], pair["continuation"], pair["sample_index"]) == (
            real[k]["prefix"], own[best]["continuation"], best)
        assert abs(pair["cosine"] - cosines[best]) < 1e-3 and pair["candidates"] == 3
        assert pair["real_continuation"] == real[k]["continuation"]
    assert summary["pairs"] == 4 and summary["chosen_cosine"] >= summary["candidate_cosine"]


def test_choosing_refuses_an_unfinished_candidates_file_and_another_configs_pairs(config_path, tmp_path):
    config = TrainConfig.from_yaml(config_path)
    drawn = tmp_path / "candidates.jsonl"
    distill(config, drawn, limit=2, candidates=2)
    lines = drawn.read_bytes().splitlines(keepends=True)
    drawn.write_bytes(b"".join(lines[:3]))
    with pytest.raises(DglmError, match="not a whole number of pairs of 2 candidates"):
        nearest_targets(config, drawn, tmp_path / "nearest.jsonl")
    drawn.write_bytes(b"".join(lines[2:]))  # pair 2's candidates where pair 1's belong
    with pytest.raises(DglmError, match="continues another prefix than this config's pair 1"):
        nearest_targets(config, drawn, tmp_path / "nearest.jsonl")
    drawn.write_bytes(b"".join(lines) + lines[0][:10])  # killed while writing a line
    with pytest.raises(DglmError, match="ends in a cut line"):
        nearest_targets(config, drawn, tmp_path / "nearest.jsonl")
    fewer = dataclasses.replace(config, data=dataclasses.replace(config.data, max_pairs=1, all_pairs_from=[]))
    drawn.write_bytes(b"".join(lines))
    with pytest.raises(DglmError, match="holds 2 pairs, but this config selects only 1"):
        nearest_targets(fewer, drawn, tmp_path / "nearest.jsonl")
    drawn.write_bytes(b"".join(lines[:2]))  # stopped between pairs: its whole pairs are chosen among
    summary = nearest_targets(config, drawn, tmp_path / "nearest.jsonl")
    assert (summary["pairs"], summary["planned"]) == (1, 2)
    drawn.with_name(drawn.name + ".settings.json").unlink()
    with pytest.raises(DglmError, match=r"dglm data nearest \(it reads a `dglm data distill` run's file\): cannot read .*settings.json"):
        nearest_targets(config, drawn, tmp_path / "nearest.jsonl")
    with pytest.raises(DglmError, match="candidates and workers must be at least 1.*got 25, 0, 1"):
        distill(config, tmp_path / "none.jsonl", candidates=0)


def test_the_cli_writes_candidates_then_chooses_and_trains_on_the_choice(config_path, tmp_path, capsys):
    drawn, chosen = tmp_path / "candidates.jsonl", tmp_path / "nearest.jsonl"
    assert main(["data", "distill", "--config", str(config_path), "--out", str(drawn), "--candidates", "2",
                 "--device", "cpu"]) == 0
    assert "choose with `dglm data nearest" in capsys.readouterr().out
    assert main(["data", "nearest", "--config", str(config_path), "--candidates", str(drawn), "--out", str(chosen),
                 "--no-balance"]) == 0
    printed = capsys.readouterr().out
    assert "wrote" in printed and "unfinished" not in printed and len(list(iter_pairs(chosen))) == 9
    config = TrainConfig.from_yaml(config_path)
    trained = dataclasses.replace(config, data=DataConfig(train=str(chosen)))
    assert (train_denoiser(trained, "nearest") / "card.json").is_file()


def test_worker_processes_write_the_same_file_as_one(config_path, tmp_path):
    config = TrainConfig.from_yaml(config_path)
    alone, shared = tmp_path / "alone.jsonl", tmp_path / "shared.jsonl"
    distill(config, alone, batch_size=2, candidates=2)
    distill(config, shared, batch_size=2, candidates=2, workers=2)
    assert shared.read_bytes() == alone.read_bytes()


def test_latents_can_come_from_the_real_continuation_while_the_text_to_write_stays_the_decoders(config_path, tmp_path):
    config = TrainConfig.from_yaml(config_path)
    drawn, chosen = tmp_path / "candidates.jsonl", tmp_path / "nearest.jsonl"
    distill(config, drawn, limit=4, candidates=2)
    nearest_targets(config, drawn, chosen)
    pairs = list(iter_pairs(chosen))
    encoder = SentenceEncoder(config.pipeline.encoder)
    for field in ("continuation", "real_continuation"):
        trained = dataclasses.replace(config, data=DataConfig(train=str(chosen), latent_from=field))
        _, latents = encoded_pairs(trained, pairs)
        expected = encoder.encode([pair[field] for pair in pairs])
        assert torch.allclose(latents, expected.half().float(), atol=1e-3), field
    with pytest.raises(DglmError, match=r"selected pair 1 \(prefix .*\) has no such field; pairs written by `dglm data nearest`"):
        encoded_pairs(dataclasses.replace(config, data=DataConfig(latent_from="real_continuation")), select_pairs(config.data))
    with pytest.raises(DglmError, match=r"data.latent_from must be one of \['continuation', 'real_continuation'\], got 'meaning'"):
        encoded_pairs(dataclasses.replace(config, data=DataConfig(latent_from="meaning")), pairs)
