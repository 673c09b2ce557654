"""The sentence-embedding space in which the diffusion runs.

Embeddings are L2-normalised (the space the attribute probes are trained in). The diffusion works on
standardised latents: per-dimension corpus mean and std removed, so every dimension has unit scale.
"""

from __future__ import annotations

import sys
import threading

import torch
import torch.nn.functional as F
from torch import nn

from dglm.errors import DglmError
from dglm.stages.pretrained import load_sentence_transformer


class SentenceEncoder:
    """A frozen sentence-transformers model that turns texts into unit-length embeddings."""

    def __init__(self, name_or_path: str, device: str = "cpu"):
        self.name = name_or_path
        self.model = load_sentence_transformer(name_or_path, device=device)
        dimension = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(dimension())
        self.warned_about_window = False
        self.lock = threading.Lock()  # a server's event loop, batching and planning threads all encode

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> torch.Tensor:
        with self.lock:  # a fast tokenizer refuses to be used by two threads at once
            embeddings = self.model.encode(
                list(texts), batch_size=batch_size, convert_to_tensor=True, show_progress_bar=progress
            )
        return F.normalize(embeddings.float().cpu(), dim=-1)

    def keep_recent(self, text: str) -> str:
        """`text`, or its most recent words when it is longer than the encoder's window (what a long text's next
        segment follows on from), cut at a word boundary."""
        window = getattr(self.model, "max_seq_length", None)
        if not window or len(text) <= window - 2:
            return text
        with self.lock:
            offsets = self.model.tokenizer(text, add_special_tokens=False,
                                           return_offsets_mapping=True)["offset_mapping"]
        if len(offsets) <= window - 2:
            return text
        start = offsets[-(window - 2)][0]
        space = text.find(" ", start)
        return text[space + 1:] if 0 <= space < len(text) - 1 and space > start else text[start:]

    def warn_if_cut(self, texts: list[str]) -> None:
        """Say once, on stderr, that a text is longer than the encoder's window: the encoder reads only its first
        `max_seq_length` word pieces (sentence-transformers cuts the rest), so a long prefix conditions the
        diffusion on its beginning, while the decoder still reads it whole."""
        window = getattr(self.model, "max_seq_length", None)
        if self.warned_about_window or not window:
            return
        for text in texts:
            if len(text) <= window - 2:
                continue
            with self.lock:
                pieces = len(self.model.tokenizer(text)["input_ids"])
            if pieces > window:
                print(f"dglm: warning: a prefix is longer than the encoder's window of {window} word pieces; the "
                      "diffusion is conditioned on its beginning only (the decoder reads it whole)", file=sys.stderr)
                self.warned_about_window = True
                return


class LatentNormalizer(nn.Module):
    """Maps unit embeddings to standardised latents and back (stored with the checkpoint)."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def fit(self, embeddings: torch.Tensor) -> "LatentNormalizer":
        if embeddings.ndim != 2 or embeddings.shape[1] != self.mean.numel():
            raise DglmError(f"expected embeddings of shape (N, {self.mean.numel()}), got {tuple(embeddings.shape)}")
        self.mean.copy_(embeddings.mean(0))
        self.std.copy_(embeddings.std(0).clamp_min(1e-6))
        return self

    def to_latent(self, embeddings: torch.Tensor) -> torch.Tensor:
        return (embeddings - self.mean) / self.std

    def to_embedding(self, latents: torch.Tensor) -> torch.Tensor:
        return F.normalize(latents * self.std + self.mean, dim=-1)
