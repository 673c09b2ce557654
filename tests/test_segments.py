"""Long text in segments (the `segment_tokens` setting): each segment planned anew from the text so far, a sample
still reproduced by its seed alone."""

from __future__ import annotations

import pytest

from dglm.errors import DglmError
from dglm.seeding import SAMPLE_SEEDS, candidate_seed, segment_seed

ASK = dict(prefix=["The film", "A long day at the office"], attributes=["toy_sentiment=positive"], num_samples=2,
           seed=5, max_new_tokens=11, guidance_scale=8.0)


def continuations(pipeline, **settings) -> list[str]:
    return [sample.continuation for sample in pipeline.generate(**{**ASK, **settings})]


def test_segment_zero_is_the_sample_and_later_segments_are_streams_no_sample_has():
    assert segment_seed(7, 0) == 7
    later = {segment_seed(seed, segment) for seed in (0, 7) for segment in range(1, 5)}
    assert len(later) == 8 and all(SAMPLE_SEEDS <= seed < 2**64 for seed in later)
    assert segment_seed(7, 1) != candidate_seed(7, 1)


def test_a_segment_as_long_as_the_text_is_one_plan_and_shorter_ones_plan_again(tiny_pipeline, toy_plugin):
    one_plan = continuations(tiny_pipeline)
    assert continuations(tiny_pipeline, segment_tokens=11) == one_plan == continuations(tiny_pipeline, segment_tokens=0)
    segmented = continuations(tiny_pipeline, segment_tokens=4)
    assert segmented != one_plan
    tokens = tiny_pipeline.decoder.tokenizer
    for text, whole in zip(segmented, one_plan):  # the first segment is the first plan's first tokens
        assert tokens(text)["input_ids"][:2] == tokens(whole)["input_ids"][:2]
    rows = list(tiny_pipeline.plan(ASK["prefix"], ASK["attributes"], 2, seed=5, max_new_tokens=11, segment_tokens=4))
    assert all(len(ids) <= 11 for ids in tiny_pipeline.generate_rows(rows))  # max_new_tokens stays a hard cap


def test_a_segmented_sample_is_the_same_alone_batched_and_with_candidates_reproducible(tiny_pipeline, toy_plugin):
    together = continuations(tiny_pipeline, segment_tokens=4)
    alone = tiny_pipeline.generate("A long day at the office", ["toy_sentiment=positive"], seed=8, max_new_tokens=11,
                                   guidance_scale=8.0, segment_tokens=4)
    assert together[3] == alone[0].continuation
    chosen = continuations(tiny_pipeline, segment_tokens=4, candidates=2)
    assert chosen == continuations(tiny_pipeline, segment_tokens=4, candidates=2)


def test_segments_are_not_streamed_text_that_fits_one_is_and_the_setting_is_checked(tiny_pipeline):
    rows = list(tiny_pipeline.plan(["The film"], seed=1, segment_tokens=3, max_new_tokens=7))
    with pytest.raises(DglmError, match="segments cannot be streamed"):
        tiny_pipeline.generate_rows(rows, on_step=lambda *args: None)
    steps = []
    one_segment = list(tiny_pipeline.plan(["The film"], seed=1, segment_tokens=7, max_new_tokens=7))
    assert tiny_pipeline.generate_rows(one_segment, on_step=lambda *args: steps.append(args)) and steps
    with pytest.raises(DglmError, match=r"segment_tokens must be an integer in \[0, 4096\], got -1"):
        tiny_pipeline.generate("The film", segment_tokens=-1)


def test_a_row_planned_once_beside_rows_in_segments_is_written_as_it_would_be_alone(tiny_pipeline, monkeypatch):
    monkeypatch.setattr(tiny_pipeline.encoder.model, "max_seq_length", 12)  # a window the decoder's context exceeds
    long_prompt = " ".join(f"word{i}" for i in range(24))  # the encoder reads its beginning when planned once
    settings = dict(seed=1, candidates=2, segment_tokens=4)
    short = next(tiny_pipeline.plan([long_prompt], max_new_tokens=4, **settings))
    long = next(tiny_pipeline.plan(["The film"], max_new_tokens=9, **settings))
    assert short.schedule_key == long.schedule_key  # so a server may batch them together
    encoded, encode = [], tiny_pipeline.encoder.encode
    monkeypatch.setattr(tiny_pipeline.encoder, "encode", lambda texts, *args, **kwargs: encoded.extend(texts)
                        or encode(texts, *args, **kwargs))
    together = tiny_pipeline.generate_rows([short, long])
    assert long_prompt in encoded, "a row planned once is planned from its prompt, as alone, not from its end"
    assert together == tiny_pipeline.generate_rows([short]) + tiny_pipeline.generate_rows([long])


def test_the_encoder_reads_the_most_recent_words_of_a_long_text(tiny_pipeline):
    encoder = tiny_pipeline.encoder
    window = encoder.model.max_seq_length
    text = " ".join(f"word{i}" for i in range(window * 2))
    kept = encoder.keep_recent(text)
    assert text.endswith(kept) and kept.startswith("word") and len(kept) < len(text)
    assert len(encoder.model.tokenizer(kept, add_special_tokens=False)["input_ids"]) <= window - 2
    assert encoder.keep_recent("A short text.") == "A short text."


def test_whole_sentences_cut_after_the_last_complete_sentence_and_only_then():
    from dglm.endings import last_sentence_end, whole_sentences

    pieces = ["He", " paid", " $3", ".", "5", " million", ".\"", " Then", " he", "<eos>"]
    decode = lambda ids: "".join(pieces[i] for i in ids if pieces[i] != "<eos>")
    eos = pieces.index("<eos>")
    assert whole_sentences(list(range(9)), decode, eos) == list(range(7))  # after 'million."', not after '$3.'
    assert whole_sentences(list(range(7)), decode, eos) == list(range(7))  # it already ends a sentence
    assert whole_sentences(list(range(5)), decode, eos) == list(range(5))  # '$3.5' ends no sentence
    assert whole_sentences([*range(9), eos], decode, eos) == [*range(9), eos]  # the decoder ended the text itself
    assert last_sentence_end("He paid $3.") == len("He paid $3.") and last_sentence_end("He paid $3.", settled=True) is None
    assert last_sentence_end("Yes! No? Fine\u2026 ok") == len("Yes! No? Fine\u2026")


def test_ending_at_a_sentence_cuts_the_same_text_after_its_last_full_stop(tiny_pipeline):
    from dglm.endings import last_sentence_end

    decoder = tiny_pipeline.decoder
    full_stop, word = decoder.token_ids(["."])[0][0], decoder.token_ids([" the"])[0][0]
    bias = {full_stop: 4.0, word: 4.0}  # a random decoder writes bytes: make it write ". the" often

    def continuations(**settings) -> list[str]:
        rows = list(tiny_pipeline.plan(["The movie"], None, 12, seed=3, logit_bias=bias, max_new_tokens=30,
                                       **settings))
        return [decoder.decode(ids) for ids in tiny_pipeline.generate_rows(rows)]

    whole, ended = continuations(), continuations(end_at="sentence")
    cut = 0
    for text, short in zip(whole, ended):
        assert text.startswith(short)
        if short != text:  # cut: it holds the text up to its last sentence end (and at most some white space)
            cut += 1
            end = last_sentence_end(text)
            assert end is not None and len(short) >= end and not short[end:].strip()
    assert cut >= 3, "too few samples had a sentence to end at for the test to mean anything"
    with pytest.raises(DglmError, match="end_at must be one of length, sentence, got 'paragraph'"):
        tiny_pipeline.generate("The movie", end_at="paragraph")


def test_segments_after_the_first_are_guided_at_segment_guidance_times_the_scale(tiny_pipeline, toy_plugin,
                                                                                 monkeypatch):
    import dglm.pipeline

    scales = []
    guidance = dglm.pipeline.BatchGuidance
    monkeypatch.setattr(dglm.pipeline, "BatchGuidance", lambda guides, row_scales: scales.append(row_scales)
                        or guidance(guides, row_scales))
    gentle = continuations(tiny_pipeline, segment_tokens=4, segment_guidance=0.25)
    assert scales[0] == [8.0] * 4 and len(scales) == 3 and all(s == [2.0] * 4 for s in scales[1:])
    strong = dict(segment_tokens=4, guidance_scale=1000.0)  # enough to change the tiny model's tokens
    gentle, alike = continuations(tiny_pipeline, **strong, segment_guidance=0.0), continuations(tiny_pipeline, **strong)
    assert gentle != alike
    tokens = tiny_pipeline.decoder.tokenizer
    for text, first in zip(gentle, alike):  # the first segment is planned as before
        assert tokens(text)["input_ids"][:4] == tokens(first)["input_ids"][:4]


def test_segments_that_end_at_a_sentence_end_at_their_first_sentence_end_or_at_their_length(tiny_pipeline,
                                                                                            monkeypatch):
    pipeline, segments = tiny_pipeline, []
    period, eos = pipeline.decoder.token_ids(["."])[0][0], pipeline.decoder.tokenizer.eos_token_id
    write = pipeline.write
    monkeypatch.setattr(pipeline, "write", lambda *args, **kwargs: (lambda out: segments.extend(out[0]) or out)(
        write(*args, **kwargs)))
    ask = dict(seed=2, max_new_tokens=20, segment_tokens=6, logit_bias={period: 5.0})  # "." often
    by_length = pipeline.generate_rows(list(pipeline.plan(["The film"], None, 3, **ask)))
    assert all(len(segment) == 6 for segment in segments[:3]), "by default a segment runs to its length"
    segments.clear()
    by_sentence = pipeline.generate_rows(list(pipeline.plan(["The film"], None, 3, segment_end="sentence", **ask)))
    ends = pipeline.decoder.sentence_end_tokens
    assert ends[period] and any(len(segment) < 6 and ends[segment[-1]] for segment in segments), "none ended early"
    assert not any(ends[segment[:-1]].any() for segment in segments), "a segment went on past a sentence end"
    cut = [segment for segment in segments if len(segment) < 6 and not ends[segment[-1]] and segment[-1] != eos]
    assert len(cut) <= 3, "only a row's last segment ends short of its length elsewhere (at max_new_tokens)"
    assert by_sentence != by_length
    assert all(len(ids) == 20 or ids[-1] == eos for ids in by_sentence), "the text is still as long as asked"
