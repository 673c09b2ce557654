"""What newcomers get wrong, command by command: numbers out of range or not numbers (nan and inf included),
prefixes too long for the models, and random input thrown at the CLI and at `Pipeline.generate`. Each ends in
one short message and a non-zero exit (a DglmError in Python), never a traceback."""

from __future__ import annotations

import math
import random

import pytest
from test_errors import expect_error

from dglm import Constraint, DglmError
from dglm.cli import main

GENERATE = ["generate", "The movie"]


@pytest.mark.parametrize("args, message", [
    (["-n", "-1"], "num_samples must be an integer from 1 to 10000, got -1"),
    (["--batch-size", "0"], "batch_size must be an integer from 1 to 4096, got 0"),
    (["--seed", "-5"], "seed must be an integer from 0 to"),
    (["--seed", str(2**63)], "seed must be an integer from 0 to"),
    (["--guidance-scale", "nan"], "guidance_scale must be a number >= 0, got nan"),
    (["--guidance-scale", "-1"], "guidance_scale must be a number >= 0, got -1.0"),
    (["--top-p", "inf"], "top_p must be a number in (0, 1], got inf"),
    (["--temperature=-inf"], "temperature must be a number >= 0, got -inf"),
    (["--repetition-penalty", "0"], "repetition_penalty must be a number > 0"),
    (["--renoise-alpha2", "1.5"], "renoise_alpha2 must be a number in (0, 1], got 1.5"),
    (["--mc-draws", "0"], "mc_draws must be an integer in [1, 1024], got 0"),
    (["--steps", "5000"], "steps must be an integer in [1, 1000], got 5000"),
    (["--top-k", "-3"], "top_k must be an integer >= 0, got -3"),
    (["--attr", "toy_sentiment=positive:nan"], "must be a finite number, got nan"),
    (["--attr", "sentiment"], "is not of the form NAME=LABEL or NAME=LABEL:WEIGHT"),
    (["--resume"], "--resume continues the file given with --output"),
])
def test_generate_flags_out_of_range_or_not_numbers(capsys, tiny_checkpoint, args, message):
    expect_error(capsys, message, *GENERATE, "--model", str(tiny_checkpoint), *args)


@pytest.mark.parametrize("args, message", [
    (["train", "all", "--config", "configs/train-cpu.yaml", "--max-minutes", "nan"], "--max-minutes must be a positive number"),
    (["train", "all", "--config", "configs/train-cpu.yaml", "--max-minutes", "-1"], "--max-minutes must be a positive number"),
    (["train", "all", "--config", "configs/train-cpu.yaml", "--max-steps", "0"], "--max-steps must be a positive number"),
    (["classifier", "train", "x", "--data", "d.csv", "--test-fraction", "nan"], "test fraction must be a number between 0 and 1"),
    (["classifier", "train", "x", "--data", "d.csv", "--test-fraction", "1"], "test fraction must be a number between 0 and 1"),
    (["classifier", "train", "x", "--data", "d.csv", "--C", "inf"], "C (inverse regularisation) must be a positive finite"),
    (["serve", "--port", "0"], "--port must be between 1 and 65535, got 0"),
    (["serve", "--max-wait-ms", "nan"], "--max-wait-ms must be a positive number, got nan"),
    (["serve", "--max-n", "0"], "--max-n must be a positive number, got 0"),
    (["serve", "--request-timeout-s", "inf"], "--request-timeout-s must be a positive number, got inf"),
    (["serve", "--api-key-file", "/nowhere/key"], "cannot read --api-key-file /nowhere/key"),
])
def test_other_commands_refuse_bad_numbers_before_doing_any_work(capsys, args, message):
    expect_error(capsys, message, *args)


def test_constraints_built_directly_refuse_weights_that_are_not_finite_numbers():
    for weight in (math.nan, math.inf, -math.inf, "2", None, True):
        with pytest.raises(DglmError, match="must be a finite number"):
            Constraint("sentiment", "positive", weight)


def test_a_prefix_longer_than_the_decoder_context_is_refused_and_one_longer_than_the_encoder_window_warned(
        capsys, tiny_checkpoint, tiny_pipeline):
    long = " ".join(["the movie was good"] * 40)  # far more than the tiny decoder's 128 positions
    expect_error(capsys, "overruns the decoder's context of 128 tokens; shorten the prefix or ask for fewer tokens",
                 "generate", long, "--model", str(tiny_checkpoint))
    window = tiny_pipeline.encoder.model.max_seq_length
    medium = " ".join(["the movie"] * (window // 2 + 4))  # past the encoder's window, within the decoder's context
    assert tiny_pipeline.decoder.count_tokens(medium) < 100
    tiny_pipeline.encoder.warned_about_window = False
    tiny_pipeline.generate(medium, seed=0, max_new_tokens=2)
    assert f"longer than the encoder's window of {window} word pieces" in capsys.readouterr().err


FUZZ_VALUES = ["", " ", "nan", "inf", "-inf", "-1", "0", "1e309", "3.5", "abc", "\u00e9\u4e2d\U0001F600", "=", ":",
               "a=b:c:d", "9" * 30, "--", "NAME=LABEL:-inf", "0x10", "\x00"]
FUZZ_FLAGS = ["-n", "--seed", "--attr", "--max-new-tokens", "--temperature", "--top-p", "--top-k", "--min-p", "--steps",
              "--guidance-scale", "--sampler", "--batch-size", "--repetition-penalty", "--prefix-guidance", "--format"]


def test_fuzzed_command_lines_end_in_a_message_never_a_traceback(capsys, tiny_checkpoint):
    rng = random.Random(0)
    for _ in range(60):
        args = ["generate", rng.choice(FUZZ_VALUES + ["The movie"] * 4), "--model", str(tiny_checkpoint),
                "--max-new-tokens", "2"]
        for flag in rng.sample(FUZZ_FLAGS, rng.randint(1, 3)):
            args += [flag, rng.choice(FUZZ_VALUES)]
        try:
            code = main(args)
        except SystemExit as exit:  # argparse's own refusal: usage and one error line
            code = exit.code
        err = capsys.readouterr().err
        assert "Traceback" not in err, (args, err)
        assert code in (0, 2), (args, code, err)
        if code == 2:
            assert err.strip().splitlines()[-1].startswith(("dglm: error: ", "usage: ", "dglm generate: error: ")), (args, err)


def test_fuzzed_python_calls_raise_dglm_errors_only(tiny_pipeline):
    rng = random.Random(1)
    values = [None, 0, -1, 1, 2, 0.5, 1.5, math.nan, math.inf, -math.inf, "x", "", [], {}, True, 2**70, 1e30, "sentiment=up"]
    keywords = ["num_samples", "seed", "max_new_tokens", "temperature", "top_p", "top_k", "min_p", "steps",
                "guidance_scale", "repetition_penalty", "batch_size", "sampler", "mc_draws", "prefix_guidance",
                "renoise_alpha2", "attributes"]
    outcomes = {"ran": 0, "refused": 0}
    for _ in range(80):
        prefix = rng.choice(["The movie", "", "  ", ["A", "B"], [], None, 3, ["ok", ""]])
        kwargs = {name: rng.choice(values) for name in rng.sample(keywords, rng.randint(1, 4))}
        kwargs.setdefault("max_new_tokens", 2)
        if kwargs.get("num_samples") == 2**70:  # valid, and would run for ever
            kwargs["num_samples"] = 3
        try:
            tiny_pipeline.generate(prefix, **kwargs)
            outcomes["ran"] += 1
        except DglmError:
            outcomes["refused"] += 1
    assert outcomes["ran"] > 0 and outcomes["refused"] > 0, outcomes


def test_a_seed_without_room_for_every_sample_is_refused_before_any_sample_is_made(tiny_pipeline, monkeypatch):
    from dglm.inputs import MAX_SEED

    assert len(tiny_pipeline.generate("The movie", num_samples=2, seed=MAX_SEED - 1, max_new_tokens=1)) == 2
    batches = []
    monkeypatch.setattr(tiny_pipeline, "generate_rows", lambda rows, on_step=None: batches.append(rows) or [[]] * len(rows))
    with pytest.raises(DglmError, match=f"seed must be an integer from 0 to {MAX_SEED - 5} for 6 samples"):
        tiny_pipeline.generate(["The movie", "A film", "The end"], num_samples=2, seed=MAX_SEED - 3, batch_size=1)
    with pytest.raises(DglmError, match=r"prefix 2 \(counting from 0\) is empty"):
        tiny_pipeline.generate(["The movie", "A film", " "], batch_size=1)
    assert batches == [], "no batch may run before the last prefix and seed are checked"


@pytest.mark.parametrize("prefix, message", [
    ("The \udcff movie", "the byte 0xff at character 4 is not UTF-8"),
    (["A film", "The \ud800 end"], r"prefix 1 \(counting from 0\) is not valid text: character 4 is a lone surrogate"),
])
def test_the_python_api_refuses_text_that_is_not_unicode_with_a_dglm_error(tiny_pipeline, prefix, message):
    with pytest.raises(DglmError, match=message):
        tiny_pipeline.generate(prefix, max_new_tokens=1)
    with pytest.raises(DglmError, match="a phrase .* is not valid text"):
        tiny_pipeline.generate("The movie", attributes=[Constraint.toward("a storm \ud800")], max_new_tokens=1)

