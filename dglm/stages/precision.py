"""The decoder's number format: float32, or bfloat16 where the hardware computes it natively.

Decoding is the slowest stage, and on a CPU its matrix products are bound by reading the weights: held in bfloat16,
the bundled decoder decodes a token about 1.7x as fast as in float32 on a 2-core CPU with AVX-512 BF16, at batch 1
and at batch 32 (benchmarks/NOTEBOOK.md, "A bfloat16 decoder"). Where the hardware lacks bfloat16 arithmetic, the
same format is emulated and slower, so "auto" keeps float32 there. Only the decoder changes format: the encoder, the
denoiser and the prompt generator are small and stay in float32, and the logits are read in float32.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from dglm.errors import DglmError

DTYPES = ("auto", "float32", "bfloat16")
NATIVE_CPU_FLAGS = {"avx512_bf16", "amx_bf16"}  # x86 flags (Linux's /proc/cpuinfo) of bfloat16 arithmetic


def decoder_dtype(name: str, device: str | torch.device) -> torch.dtype:
    """The number format `name` asks for on `device`; "auto" is bfloat16 where it is native, float32 elsewhere."""
    if name not in DTYPES:
        raise DglmError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}", field="dtype")
    if name == "auto":
        name = "bfloat16" if computes_bfloat16(device) else "float32"
    return getattr(torch, name)


def computes_bfloat16(device: str | torch.device) -> bool:
    """Whether `device` has bfloat16 arithmetic: a GPU that says so, or a CPU with AVX-512 BF16 or AMX."""
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.cuda.is_bf16_supported()
    return kind == "cpu" and bool(cpu_flags() & NATIVE_CPU_FLAGS)


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
