"""Tensors computed once and kept on disk: sentence embeddings of training pairs and of judges' texts.

Encoding the corpus or a judge's texts takes minutes to hours on a CPU and gives the same result every time,
so each is written to a safetensors file named by a digest of the encoder and the texts. Another encoder or
another selection of texts gets another name; safetensors holds tensors alone, so reading a file cannot run code.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def texts_digest(encoder: str, texts: Iterable[str]) -> str:
    """Hex digest of an encoder's name and texts, in order (each text ends with a NUL)."""
    digest = hashlib.sha256(encoder.encode())
    for text in texts:
        digest.update(text.encode() + b"\0")
    return digest.hexdigest()


def cached_tensors(path: Path, compute: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The tensors in `path`, or `compute()`'s, written there first.

    The file is written under a temporary name and then renamed, so a run cut off while writing leaves no
    truncated file behind.
    """
    if path.is_file():
        return load_file(str(path))
    tensors = {name: tensor.contiguous() for name, tensor in compute().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    save_file(tensors, str(partial))
    partial.replace(path)
    return tensors
