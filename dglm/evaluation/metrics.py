"""Measurements of generated text that need no model: label shares, diversity (Dist-n), repeated phrases and the last
third of a long text, verbatim copies of the training pairs, and the median that skips unscorable samples."""

from __future__ import annotations

import math
import re
from array import array

import torch

from dglm.data.pairs import iter_pairs
from dglm.repeats import word_ngrams


def label_shares(verdicts: list[str], labels: list[str]) -> dict[str, float]:
    """The share of verdicts that are each label."""
    return {label: sum(v == label for v in verdicts) / len(verdicts) for label in labels}


def distinct_n(texts: list[str], n: int) -> float:
    """Unique n-grams over all n-grams of whitespace tokens (Dist-n of Li et al. 2016)."""
    grams = [tuple(words[i : i + n]) for words in (t.split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition(text: str) -> tuple[bool, float]:
    """(whether some lowercased word 4-gram occurs twice, the share of 4-grams that repeat an earlier one): how much a
    long text loops."""
    grams = word_ngrams(text, 4)
    repeats = len(grams) - len(set(grams))
    return repeats > 0, repeats / len(grams) if grams else 0.0


def repeats_within(text: str, words: int) -> bool:
    """Whether some word 4-gram repeats within the text's first `words` words: repetition at a given length, since a
    longer text has more chances to repeat itself."""
    return repetition(" ".join(text.split()[:words]))[0]


def last_third(text: str) -> str:
    """The last third of a text's words: what a long text ends on, judged alone."""
    words = text.split()
    return " ".join(words[len(words) - len(words) // 3:]) if len(words) >= 3 else text


def word_ngram_hashes(text: str, n: int) -> list[int]:
    words = re.findall(r"\w+", text.lower())
    return [hash(tuple(words[i : i + n])) for i in range(len(words) - n + 1)]


class CopyDetector:
    """Spots samples that repeat `n` words in a row from the training pairs.

    Memorised training text would flatter a judge trained on similar text (the sentiment judge's reviews
    are in the training pairs too), so the evaluation reports how often it happens.
    """

    def __init__(self, pairs_path: str, n: int = 8):
        hashes = array("q")  # 8 bytes a hash, where a list of Python ints would take ~40
        for pair in iter_pairs(pairs_path):
            hashes.extend(word_ngram_hashes(pair["prefix"] + pair["continuation"], n))
        self.known = torch.empty(0, dtype=torch.int64)  # stays empty when no pair has n words
        if hashes:  # frombuffer refuses an empty buffer
            self.known = torch.frombuffer(hashes, dtype=torch.int64).unique()
        self.n = n

    def share_copied(self, continuations: list[str]) -> float:
        """The share of continuations with at least one n-word run found in the training pairs."""
        copied = [bool(torch.isin(torch.tensor(h, dtype=torch.int64), self.known).any()) if h else False
                  for h in (word_ngram_hashes(text, self.n) for text in continuations)]
        return sum(copied) / len(copied)


def median(values: list[float]) -> float:
    """Median of the finite values (NaN marks an unscorable sample)."""
    ordered = sorted(v for v in values if math.isfinite(v))
    if not ordered:
        return float("nan")
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
