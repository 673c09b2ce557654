"""Choosing among candidates (the `candidates` setting): each sample draws K proposals, decodes them together and
keeps one by a documented rule; one candidate is today's sample, and a sample still depends on its seed alone."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dglm.constraints import as_constraints
from dglm.errors import DglmError
from dglm.pipeline import Row
from dglm.repeats import adds_repeat, without_new_repeats
from dglm.seeding import SAMPLE_SEEDS, candidate_seed, sample_generators
from dglm.stages.guidance import BatchGuidance


def test_candidate_zero_is_the_sample_and_the_others_are_streams_no_sample_has():
    assert candidate_seed(42, 0) == 42
    others = {candidate_seed(seed, candidate) for seed in (0, 1, 42, 2**63 - 1) for candidate in range(1, 9)}
    assert len(others) == 32 and all(SAMPLE_SEEDS <= seed < 2**64 for seed in others)
    assert candidate_seed(42, 3) == candidate_seed(42, 3)


def rows_for(pipeline, prefix: str, seeds: list[int], candidates: int, attributes=None) -> list[Row]:
    return list(pipeline.plan([prefix] * len(seeds), attributes, seed=seeds, candidates=candidates, max_new_tokens=6,
                              guidance_scale=16.0))


@pytest.mark.parametrize("attributes", [None, ["toy_sentiment=positive"]])
def test_the_kept_text_is_the_candidate_the_rule_chooses(tiny_pipeline, toy_plugin, attributes):
    pipeline = tiny_pipeline
    [kept] = pipeline.generate_rows(rows_for(pipeline, "The film", [5], 3, attributes))
    one = [dataclasses.replace(row, seed=candidate_seed(5, c))  # each candidate drawn as a sample of its own
           for c, row in enumerate(rows_for(pipeline, "The film", [0, 1, 2], 1, attributes))]
    drafts = pipeline.generate_rows(one)
    texts = [pipeline.decoder.decode(ids) for ids in drafts]
    row = rows_for(pipeline, "The film", [5], 3, attributes)[0]
    assert kept == drafts[pipeline.choose_candidate(row, texts)]


def test_a_plan_encodes_each_context_once_and_choosing_does_not_encode_it_again(tiny_pipeline, toy_plugin, monkeypatch):
    pipeline, encoded = tiny_pipeline, []
    encode = pipeline.encoder.encode
    monkeypatch.setattr(pipeline.encoder, "encode", lambda texts, *args, **kwargs: encoded.append(list(texts))
                        or encode(texts, *args, **kwargs))
    rows = rows_for(pipeline, "The film", [3], 3, ["toy_sentiment=positive"])
    rows += rows_for(pipeline, "A long day at the office", [4], 3, ["toy_sentiment=positive"])
    kept, _ = pipeline.write(rows, [row.prefix for row in rows], [row.seed for row in rows],
                             [row.decoding for row in rows])
    contexts = [texts for texts in encoded if "The film" in texts]
    assert contexts == [["The film", "A long day at the office"]], "each context once, and only when planning"
    monkeypatch.undo()
    assert kept == pipeline.generate_rows(rows), "the same text as the rows written the usual way"


def test_the_rule_prefers_the_closest_of_those_that_reach_the_target_else_the_most_on_target(tiny_pipeline, toy_plugin):
    pipeline = tiny_pipeline
    texts = ["a good day", "a bad day", "The film was fine", "nothing at all", "The film"]
    row = rows_for(pipeline, "The film", [0], 5, ["toy_sentiment=positive"])[0]
    embeddings = pipeline.encoder.encode(["The film", *texts])
    probe, label, _ = row.guide.terms[0]
    with torch.no_grad():
        positive = torch.softmax(probe(embeddings[1:]), dim=-1)[:, label]
    closeness = embeddings[1:] @ embeddings[0]
    for target in (float(positive.median()), float(positive.max()) + 1e-3):
        chosen = pipeline.choose_candidate(dataclasses.replace(row, diffusion=row.diffusion.updated(guidance_target=target)), texts)
        reached = positive >= target
        if reached.any():
            assert reached[chosen] and closeness[chosen] == closeness[reached].max()
        else:
            assert chosen == int(positive.argmax())


def test_a_candidate_that_repeats_a_phrase_of_the_text_so_far_or_its_own_is_passed_over_when_another_is_not(
        tiny_pipeline, toy_plugin):
    pipeline = tiny_pipeline
    before = " we went to the lake and swam"
    looping = " we went to the lake again"  # repeats "we went to the" of the text so far
    own_loop = " a good day, a good day, a good day"  # repeats a phrase of its own
    changed = 0
    for fresh in (" then the rain came down hard", " The film", " nothing at all"):
        texts = [looping, own_loop, fresh]
        for attributes in (None, ["toy_sentiment=positive"]):
            row = rows_for(pipeline, "The film", [0], 3, attributes)[0]
            avoiding = dataclasses.replace(row, diffusion=row.diffusion.updated(avoid_repeats=4))
            assert texts[pipeline.choose_candidate(avoiding, texts, before=before)] == fresh
            changed += texts[pipeline.choose_candidate(row, texts, before=before)] != fresh
            # when every candidate repeats, the rule chooses among all of them, as without the setting
            assert (pipeline.choose_candidate(avoiding, texts[:2], before=before)
                    == pipeline.choose_candidate(row, texts[:2], before=before))
    assert changed, "without the setting the fresh draft was always chosen anyway: the test shows nothing"


def test_choosing_in_a_later_segment_reads_the_continuation_written_before_it(tiny_pipeline, monkeypatch):
    pipeline, befores = tiny_pipeline, []
    choose = pipeline.choose_candidate
    monkeypatch.setattr(pipeline, "choose_candidate", lambda row, texts, context=None, before="": befores.append(before)
                        or choose(row, texts, context, before))
    [sample] = pipeline.generate("The film", seed=3, candidates=2, max_new_tokens=9, segment_tokens=3)
    assert befores[0] == "" and len(befores) == 3
    assert all(sample.continuation.startswith(before) for before in befores)
    assert len(befores[0]) < len(befores[1]) < len(befores[2])


def test_a_repeat_is_a_word_ngram_that_occurs_earlier_in_the_text_so_far_or_the_draft():
    assert adds_repeat("", "a b c d a b c d", 4) and not adds_repeat("", "a b c d e", 4)
    assert adds_repeat(" x a b c d", " e A b c d", 4), "lowercased, and against the text so far"
    assert adds_repeat(" a b", " c d a b c d", 4), "an n-gram across the join counts"
    assert adds_repeat(" a b c d x a b c d", " a b c d", 4), "a third time counts too"
    assert not adds_repeat(" a b c d a b c d", " e f", 4), "a repeat already written is not the draft's"
    assert not adds_repeat(" it was unbeliev", "able it was unbeliev", 3), "a word the draft ends is one word"
    assert without_new_repeats(["a b c d a b c d", "p q r s"], "", 4) == [False, True]
    assert without_new_repeats(["a b c d a b c d"], "", 4) == [True], "each adds one: all stay"
    assert without_new_repeats(["a b c d a b c d", "p"], "", 0) == [True, True], "0 turns it off"


def test_a_sample_with_candidates_is_the_same_alone_and_in_a_batch(tiny_pipeline):
    together = tiny_pipeline.generate(["The film", "A day"], num_samples=2, seed=11, candidates=3, max_new_tokens=5)
    alone = tiny_pipeline.generate("A day", num_samples=1, seed=13, candidates=3, max_new_tokens=5)
    assert together[2].continuation == alone[0].continuation and together[2].seed == 13
    plain = tiny_pipeline.generate(["The film", "A day"], num_samples=2, seed=11, max_new_tokens=5)
    assert [s.continuation for s in plain] == [s.continuation for s in
                                               tiny_pipeline.generate(["The film", "A day"], num_samples=2, seed=11,
                                                                      candidates=1, max_new_tokens=5)]


def test_candidates_cannot_stream_and_are_checked(tiny_pipeline):
    rows = rows_for(tiny_pipeline, "The film", [1], 2)
    with pytest.raises(DglmError, match="candidates above 1 cannot be streamed"):
        tiny_pipeline.generate_rows(rows, on_step=lambda *args: None)
    with pytest.raises(DglmError, match=r"candidates must be an integer in \[1, 64\], got 0"):
        tiny_pipeline.generate("The film", candidates=0)


def test_a_run_written_before_the_setting_existed_resumes_at_its_default_and_not_above(tmp_path):
    import json

    from dglm.sample_file import SampleFile

    out = tmp_path / "samples.jsonl"
    run = {"seed": 0, "num_samples": 1, "guidance_scale": 256.0}
    SampleFile(out, run)
    earlier = json.loads(out.with_name("samples.jsonl.settings.json").read_text())
    assert "candidates" not in earlier
    assert SampleFile(out, {**run, "candidates": 1}, resume=True).held == 0
    with pytest.raises(DglmError, match="candidates: None then, 4 now"):
        SampleFile(out, {**run, "candidates": 4}, resume=True)


def test_guidance_from_a_later_start_changes_the_proposal_and_from_the_first_step_changes_nothing(tiny_pipeline, toy_plugin):
    def latents(scale: float = 64.0, **settings) -> torch.Tensor:
        diffusion, _ = tiny_pipeline.settings(guidance_scale=scale, **settings)
        guide = tiny_pipeline.make_guide(as_constraints(["toy_sentiment=positive"]), diffusion)
        guidance = BatchGuidance([guide], [scale])
        return tiny_pipeline.propose_latents(["The film"], sample_generators([3]), guidance, diffusion)

    assert torch.equal(latents(), latents(guidance_start=1.0))
    late = latents(guidance_start=0.5)
    assert not torch.equal(latents(), late) and not torch.equal(latents(scale=0.0), late)
