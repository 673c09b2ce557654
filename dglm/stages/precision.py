"""The decoder's number format: float32 (the default), or bfloat16 on request.

Decoding is the slowest stage, and on a CPU its matrix products are bound by reading the weights: held in bfloat16,
the bundled decoder decodes a token about 1.7x as fast as in float32 on a 2-core CPU with AVX-512 BF16, with text of
the same quality (benchmarks/NOTEBOOK.md, "A bfloat16 decoder"). It is not the default because it breaks a promise:
in bfloat16 a sample's text depends on the samples it is batched with (attention over a padded key-value cache rounds
differently), so a seed no longer reproduces a sample alone, and a server's answer depends on the other requests. Only
the decoder changes format: the encoder, the denoiser and the prompt generator stay in float32, and the logits are read
in float32.
"""

from __future__ import annotations

import warnings
from functools import lru_cache
from pathlib import Path

import torch

from dglm.errors import DglmError

DTYPES = ("float32", "bfloat16")
NATIVE_CPU_FLAGS = {"avx512_bf16", "amx_bf16"}  # x86 flags (Linux's /proc/cpuinfo) of bfloat16 arithmetic


def decoder_dtype(name: str, device: str | torch.device) -> torch.dtype:
    """The number format `name` asks for; bfloat16 on a device without bfloat16 arithmetic is emulated, and said so."""
    if name not in DTYPES:
        raise DglmError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}", field="dtype")
    if name == "bfloat16" and not computes_bfloat16(device):
        warnings.warn(f"{device} has no bfloat16 arithmetic (AVX-512 BF16, AMX or a recent GPU): the decoder will "
                      "emulate it, more slowly than in float32", stacklevel=3)
    return getattr(torch, name)


def computes_bfloat16(device: str | torch.device) -> bool:
    """Whether `device` has bfloat16 arithmetic: a GPU that says so, or a CPU with AVX-512 BF16 or AMX."""
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return kind == "cpu" and bool(cpu_flags() & NATIVE_CPU_FLAGS)


def hold_in(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Round `model`'s weights to `dtype`, leaving its buffers as they are: the rotary position frequencies stay in
    float32, as transformers keeps them when it loads a model in bfloat16. Tied weights stay tied."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.data = parameter.data.to(dtype)


@lru_cache(maxsize=1)
def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags as Linux lists them; none where that file is missing (another system)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()
