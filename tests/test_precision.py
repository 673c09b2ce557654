"""The decoder's number format: float32 unless bfloat16 is asked for, applied to the decoder a pipeline loads (not to
one passed in), after the adapter is merged; bfloat16 on a CPU without its arithmetic is said to be emulated."""

from __future__ import annotations

import warnings

import pytest
import torch

from dglm.errors import DglmError
from dglm.pipeline import Pipeline
from dglm.stages import precision


def test_bfloat16_is_said_to_be_emulated_only_on_a_cpu_without_its_arithmetic(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16\n\nprocessor\t: 1\n")
    assert precision.cpu_flags.__wrapped__(cpuinfo) == {"fpu", "sse2", "avx512f", "avx512_bf16"}
    assert precision.cpu_flags.__wrapped__(tmp_path / "missing") == frozenset()
    for flags, native in [({"avx512f", "avx512_bf16"}, True), ({"amx_bf16"}, True), ({"avx512f", "avx2"}, False),
                          (set(), False)]:
        monkeypatch.setattr(precision, "cpu_flags", lambda flags=flags: frozenset(flags))
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            assert precision.decoder_dtype("bfloat16", "cpu") == torch.bfloat16
            assert precision.decoder_dtype("float32", "cpu") == torch.float32
        assert [str(w.message) for w in said] == ([] if native else [
            "cpu has no bfloat16 arithmetic (AVX-512 BF16, AMX or a recent GPU): the decoder will emulate it, more "
            "slowly than in float32"]), flags


def test_holding_a_model_in_bfloat16_rounds_its_weights_and_keeps_its_buffers_and_ties():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 10, bias=False))
    model[1].weight = model[0].weight  # tied, as an LM head and its input embeddings are
    model.register_buffer("inv_freq", torch.tensor([1.0, 1e-3]))
    weight = model[0].weight.detach().clone()
    precision.hold_in(model, torch.bfloat16)
    assert model[1].weight is model[0].weight and torch.equal(model[0].weight, weight.to(torch.bfloat16))
    assert model.inv_freq.dtype == torch.float32 and torch.equal(model.inv_freq, torch.tensor([1.0, 1e-3]))


def test_an_unknown_dtype_is_refused_with_the_accepted_ones(tiny_checkpoint):
    with pytest.raises(DglmError, match="dtype must be one of float32, bfloat16, got 'float16'"):
        Pipeline.from_pretrained(tiny_checkpoint, dtype="float16")


def test_a_bfloat16_pipeline_holds_the_float32_weights_rounded_and_writes(tiny_checkpoint):
    full = Pipeline.from_pretrained(tiny_checkpoint)
    half = Pipeline.from_pretrained(tiny_checkpoint, dtype="bfloat16")
    assert full.decoder.dtype == torch.float32 and half.decoder.dtype == torch.bfloat16
    weights = dict(full.decoder.model.named_parameters())
    assert all(torch.equal(value, weights[name].to(torch.bfloat16))
               for name, value in half.decoder.model.named_parameters())
    assert next(half.parts.prompt_generator.parameters()).dtype == torch.float32  # only the decoder changes

    assert all(sample.continuation for sample in half.generate(["A day", "The sea"], num_samples=2, seed=5,
                                                               candidates=2, max_new_tokens=6))


def test_a_decoder_passed_in_keeps_its_own_format(tiny_checkpoint):
    shared = Pipeline.from_pretrained(tiny_checkpoint).decoder
    Pipeline.from_pretrained(tiny_checkpoint, decoder=shared, dtype="bfloat16")
    assert shared.dtype == torch.float32
