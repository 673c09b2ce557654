"""The decoder's number format: "auto" is bfloat16 only where the hardware computes it, the format is applied to the
decoder a pipeline loads (not to one passed in), and a bfloat16 sample still depends on its seed alone."""

from __future__ import annotations

import pytest
import torch

from dglm.errors import DglmError
from dglm.pipeline import Pipeline
from dglm.stages import precision


def test_auto_is_bfloat16_only_on_a_cpu_that_computes_it(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16\n\nprocessor\t: 1\n")
    assert precision.cpu_flags.__wrapped__(cpuinfo) == {"fpu", "sse2", "avx512f", "avx512_bf16"}
    assert precision.cpu_flags.__wrapped__(tmp_path / "missing") == frozenset()
    for flags, expected in [({"avx512f", "avx512_bf16"}, torch.bfloat16), ({"amx_bf16"}, torch.bfloat16),
                            ({"avx512f", "avx2"}, torch.float32), (set(), torch.float32)]:
        monkeypatch.setattr(precision, "cpu_flags", lambda flags=flags: frozenset(flags))
        assert precision.decoder_dtype("auto", "cpu") == expected, flags
        assert precision.decoder_dtype("float32", "cpu") == torch.float32
        assert precision.decoder_dtype("bfloat16", "cpu") == torch.bfloat16


def test_an_unknown_dtype_is_refused_with_the_accepted_ones(tiny_checkpoint):
    with pytest.raises(DglmError, match="dtype must be one of auto, float32, bfloat16, got 'float16'"):
        Pipeline.from_pretrained(tiny_checkpoint, dtype="float16")


def test_a_bfloat16_pipeline_holds_the_float32_weights_rounded_and_a_sample_depends_on_its_seed_alone(
        tiny_checkpoint):
    full = Pipeline.from_pretrained(tiny_checkpoint, dtype="float32")
    half = Pipeline.from_pretrained(tiny_checkpoint, dtype="bfloat16")
    assert full.decoder.dtype == torch.float32 and half.decoder.dtype == torch.bfloat16
    weights = dict(full.decoder.model.named_parameters())
    assert all(torch.equal(value, weights[name].to(torch.bfloat16))
               for name, value in half.decoder.model.named_parameters())
    assert next(half.parts.prompt_generator.parameters()).dtype == torch.float32  # only the decoder changes

    together = half.generate(["A day", "The sea"], num_samples=3, seed=5, candidates=2, max_new_tokens=6)
    alone = half.generate("The sea", num_samples=1, seed=together[4].seed, candidates=2, max_new_tokens=6)
    assert alone[0].continuation == together[4].continuation
    assert all(sample.continuation for sample in together)


def test_a_decoder_passed_in_keeps_its_own_format(tiny_checkpoint):
    shared = Pipeline.from_pretrained(tiny_checkpoint, dtype="float32").decoder
    Pipeline.from_pretrained(tiny_checkpoint, decoder=shared, dtype="bfloat16")
    assert shared.dtype == torch.float32
