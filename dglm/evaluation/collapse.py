"""Collapse: whether a condition's continuations drift to one stock meaning, whatever their prefix.

Label shares, perplexity and Dist-n within one prefix do not see it: a guided method can meet its label by
writing about an accident after every prefix. These measures do, on an encoder other than the guidance's:
- cross-prefix cosine: the mean cosine between continuations of *different* prefixes (reported relative to
  plain sampling's as `homogeneity`);
- prefix cosine: the mean cosine between a prefix and its own continuation (relative: `prefix_relevance`);
- top-word share: the largest share of samples that contain one content word, and that word;
- prefix-word share: the share of samples that repeat a content word of their prefix (prefix relevance can be
  bought by echoing the prefix's words, so the two are read together).
"""

from __future__ import annotations

import re
from collections import Counter

import torch

WORD = re.compile(r"[a-z]+")


def content_words(continuation: str, prefix: str = "") -> set[str]:
    """Lowercased words of four letters or more, not stop words, not in the prefix."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    in_prefix = set(WORD.findall(prefix.lower()))
    return {word for word in WORD.findall(continuation.lower())
            if len(word) >= 4 and word not in ENGLISH_STOP_WORDS and word not in in_prefix}


def prefix_word_share(prefixes: list[str], continuations: list[str]) -> float:
    """The share of samples whose continuation repeats a content word of its own prefix."""
    repeats = [bool(content_words(prefix) & content_words(text)) for prefix, text in zip(prefixes, continuations)]
    return sum(repeats) / len(repeats) if repeats else 0.0


def top_word_share(prefixes: list[str], continuations: list[str]) -> tuple[str, float]:
    """The content word found in the most samples, and the share of samples that contain it."""
    counts = Counter(word for prefix, text in zip(prefixes, continuations) for word in content_words(text, prefix))
    if not counts:
        return "", 0.0
    word, count = max(counts.items(), key=lambda item: (item[1], item[0]))
    return word, count / len(continuations)


def cross_prefix_cosine(embeddings: torch.Tensor, prefixes: list[str]) -> float:
    """Mean cosine over all pairs of unit embeddings whose prefixes differ.

    Sum over all ordered pairs is |sum e|^2; pairs within one prefix (self-pairs included) are subtracted group by
    group, so this is linear in the number of samples."""
    groups: dict[str, list[int]] = {}
    for index, prefix in enumerate(prefixes):
        groups.setdefault(prefix, []).append(index)
    embeddings = embeddings.double()
    within = sum(float(embeddings[rows].sum(0).square().sum()) for rows in groups.values())
    pairs = len(prefixes) ** 2 - sum(len(rows) ** 2 for rows in groups.values())
    if pairs == 0:
        return float("nan")
    return (float(embeddings.sum(0).square().sum()) - within) / pairs


class CollapseJudge:
    """Embeds prefixes and continuations with `encoder` (a sentence-transformers name or path) and measures collapse."""

    def __init__(self, encoder: str):
        from dglm.stages.encoder import SentenceEncoder

        self.encoder = SentenceEncoder(encoder)

    def __call__(self, prefixes: list[str], continuations: list[str]) -> dict:
        unique_prefixes = sorted(set(prefixes))
        prefix_embeddings = dict(zip(unique_prefixes, self.encoder.encode(unique_prefixes)))
        embeddings = self.encoder.encode(continuations)
        own_prefix = torch.stack([prefix_embeddings[p] for p in prefixes])
        word, share = top_word_share(prefixes, continuations)
        return {"cross_prefix_cosine": cross_prefix_cosine(embeddings, prefixes),
                "prefix_cosine": float((embeddings * own_prefix).sum(-1).mean()),
                "top_word": word, "top_word_share": share,
                "prefix_word_share": prefix_word_share(prefixes, continuations)}


def relative_to_plain(results: list[dict], plain: dict) -> None:
    """Add `homogeneity` and `prefix_relevance` to each result (and to its `last_third`, for long text): its cosines
    divided by plain sampling's; and, for long text, its length and time a sample as multiples of plain sampling's."""
    for result in results:
        if "cross_prefix_cosine" in result and "cross_prefix_cosine" in plain:
            result["homogeneity"] = result["cross_prefix_cosine"] / plain["cross_prefix_cosine"]
            result["prefix_relevance"] = result["prefix_cosine"] / plain["prefix_cosine"]
        for measure, ratio in (("words", "words_x_plain"), ("seconds_per_sample", "seconds_x_plain")):
            if "words" in result and measure in result and plain.get(measure):  # long text (`long_text`) only
                result[ratio] = result[measure] / plain[measure]
        if "last_third" in result and "last_third" in plain:
            relative_to_plain([result["last_third"]], plain["last_third"])
