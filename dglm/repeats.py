"""Repeated phrases: the lowercased, whitespace-separated word n-grams of a text that occur more than once. The
evaluation's repetition measure counts them, and choosing among candidates can pass over a draft that adds one."""

from __future__ import annotations


def word_ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    """The text's lowercased word n-grams, in order (words are what `str.split` gives)."""
    words = text.lower().split()
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def repeated_ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """The word n-grams that occur more than once in the text."""
    seen, repeated = set(), set()
    for gram in word_ngrams(text, n):
        (repeated if gram in seen else seen).add(gram)
    return repeated


def adds_repeat(before: str, text: str, n: int) -> bool:
    """Whether `text`, written after `before`, repeats a word n-gram that `before` did not already repeat: one of its
    own twice, or one of `before`'s (an n-gram across the join counts too)."""
    joined = f"{before} {text}" if before else text
    return bool(repeated_ngrams(joined, n) - repeated_ngrams(before, n))


def without_new_repeats(texts: list[str], before: str, n: int) -> list[bool]:
    """Which of several drafts that may follow `before` add no repeated word n-gram (`adds_repeat`); every draft when
    `n` is 0 or when each adds one, so that there is always one to choose."""
    fresh = [not n or not adds_repeat(before, text, n) for text in texts]
    return fresh if any(fresh) else [True] * len(texts)
