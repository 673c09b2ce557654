"""Repeated phrases: the lowercased, whitespace-separated word n-grams of a text that occur more than once. The
evaluation's repetition measure counts them, and choosing among candidates can pass over a draft that adds one."""

from __future__ import annotations


def word_ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    """The text's lowercased word n-grams, in order (words are what `str.split` gives)."""
    words = text.lower().split()
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def adds_repeat(before: str, text: str, n: int) -> bool:
    """Whether `text`, written right after `before` (it brings its own leading space, or ends a word `before` began),
    holds a word n-gram that occurs earlier: in `before`, or earlier in `text`. An n-gram across the join counts, and
    so does one `before` already repeats."""
    grams = word_ngrams(before + text, n)
    whole = len(before.split()) - (bool(before[-1:].strip()) and bool(text[:1].strip()))  # before's unbroken words
    earlier = max(0, whole - n + 1)  # the n-grams that lie within them
    seen = set(grams[:earlier])
    for gram in grams[earlier:]:
        if gram in seen:
            return True
        seen.add(gram)
    return False


def without_new_repeats(texts: list[str], before: str, n: int) -> list[bool]:
    """Which of several drafts that may follow `before` add no repeated word n-gram (`adds_repeat`); every draft when
    `n` is 0 or when each adds one, so that there is always one to choose."""
    fresh = [not n or not adds_repeat(before, text, n) for text in texts]
    return fresh if any(fresh) else [True] * len(texts)
