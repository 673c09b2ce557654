"""Prefix/continuation pairs (written by `dglm data build`): reading them, choosing which to train on, and
how often each is drawn."""

from __future__ import annotations

import itertools
import json
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from dglm.config import DataConfig
from dglm.errors import DglmError


def iter_pairs(path: Path | str) -> Iterator[dict]:
    """Stream prefix/continuation pairs from a JSONL file, for passes that need not hold them all."""
    path = Path(path)
    if not path.is_file():
        raise DglmError(f"training pairs {path} do not exist; build them with `dglm data build`")
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            yield json.loads(line)


def read_pairs(path: Path | str, limit: int = 0) -> list[dict]:
    return list(itertools.islice(iter_pairs(path), limit or None))


def select_pairs(data: DataConfig) -> list[dict]:
    """The first `max_pairs` training pairs, plus every later pair from the sources in `all_pairs_from`, with a
    share of their targets taken from `mix_targets_from` when it is set.

    Lets a CPU-sized run keep all of a small, valuable source (the movie reviews) without encoding the
    whole corpus.
    """
    pairs, lines, sources = [], [], set()
    for index, pair in enumerate(iter_pairs(data.train)):
        source = source_of(pair)
        sources.add(source)
        if not data.max_pairs or index < data.max_pairs or source in data.all_pairs_from:
            pairs.append(pair)
            lines.append(index)
    refuse_unknown_sources("all_pairs_from", data.all_pairs_from, sources, f"{data.train} has")
    if data.max_pairs and len(pairs) < data.max_pairs:  # e.g. a decoder-written file not yet complete
        warnings.warn(f"{data.train} holds {len(pairs)} pairs, fewer than max_pairs ({data.max_pairs}): a run on it "
                      "draws other batches than one on a complete file", stacklevel=2)
    return mixed_targets(pairs, lines, data) if data.mix_share or data.mix_targets_from else pairs


def mixed_targets(pairs: list[dict], lines: list[int], data: DataConfig) -> list[dict]:
    """`pairs` (read from `lines` of `data.train`) with a `data.mix_share` share of them, the same ones every run,
    continued as the pair on the same line of `data.mix_targets_from`: one file of targets mixed into another,
    prefix by prefix."""
    if not 0 < data.mix_share <= 1 or not data.mix_targets_from:
        raise DglmError(f"data.mix_share must be in (0, 1] and data.mix_targets_from name a pairs file, got "
                        f"{data.mix_share} and {data.mix_targets_from!r}")
    others = read_pairs(data.mix_targets_from, lines[-1] + 1 if lines else 0)
    taken = torch.rand(len(pairs), generator=torch.Generator().manual_seed(0)) < data.mix_share
    mixed = []
    for line, pair, take in zip(lines, pairs, taken.tolist()):
        if take:
            if line >= len(others) or others[line]["prefix"] != pair["prefix"]:
                raise DglmError(f"{data.mix_targets_from} line {line + 1} does not continue the prefix of "
                                f"{data.train} line {line + 1}; mixed targets need the same pairs in the same order")
            pair = {**pair, "continuation": others[line]["continuation"]}
        mixed.append(pair)
    return mixed


LATENT_FIELDS = ("continuation", "real_continuation")


def latent_texts(pairs: list[dict], field: str) -> list[str]:
    """The texts whose embeddings are the pairs' latents (`data.latent_from`)."""
    if field not in LATENT_FIELDS:
        raise DglmError(f"data.latent_from must be one of {list(LATENT_FIELDS)}, got {field!r}")
    missing = next((k for k, pair in enumerate(pairs) if field not in pair), None)
    if missing is not None:
        raise DglmError(f"data.latent_from is {field!r}, but selected pair {missing + 1} (prefix "
                        f"{pairs[missing]['prefix'][:40]!r}) has no such field; pairs written by `dglm data nearest` "
                        "keep their real continuation")
    return [pair[field] for pair in pairs]


def source_of(pair: dict) -> str:
    """The corpus source a pair came from; pairs without one share the name "(none)"."""
    return pair.get("source", "(none)")


def refuse_unknown_sources(option: str, asked: Iterable[str], known: set[str], holder: str) -> None:
    unknown = sorted(set(asked) - known)
    if unknown:
        raise DglmError(f"{option} names unknown source(s) {unknown}; {holder}: {sorted(known)}")


def pair_weights(pairs: list[dict], source_weights: dict[str, float]) -> torch.Tensor | None:
    """Per-pair sampling weights from per-source weights (None when every source weighs the same).

    Lets a stage see some sources more often, e.g. sentiment-bearing reviews, without rebuilding the corpus.
    """
    if not source_weights:
        return None
    sources = [source_of(p) for p in pairs]
    refuse_unknown_sources("source_weights", source_weights, set(sources), "the training pairs have")
    if any(not isinstance(w, (int, float)) or w <= 0 for w in source_weights.values()):
        raise DglmError(f"source_weights must be positive numbers, got {source_weights}")
    return torch.tensor([float(source_weights.get(source, 1.0)) for source in sources])
