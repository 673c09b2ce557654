"""Where a continuation ends: after `max_new_tokens` tokens or at the end of text, or, with the setting
`end_at="sentence"`, after its last complete sentence. A sentence ends with `.`, `!`, `?` or `…` and any closing
quotes or brackets, before a space or the end of the text ("3.5" and "e.g." inside a word do not end one; "Mr. Smith"
does, as far as this rule can tell)."""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Callable

SENTENCE_END = re.compile(r"[.!?\u2026]+[\"'\u201d\u2019)\]]*(?=\s|$)")


def last_sentence_end(text: str, settled: bool = False) -> int | None:
    """Where the text's last complete sentence ends (after its closing quote or bracket), or None if none does. With
    `settled`, only an end that more text follows counts (text still being written: "$3." may become "$3.5")."""
    ends = [match.end() for match in SENTENCE_END.finditer(text) if not settled or match.end() < len(text)]
    return ends[-1] if ends else None


def ends_sentence(text: str) -> bool:
    """Whether the text ends a sentence: its last sentence end is at its very end."""
    return bool(text) and last_sentence_end(text) == len(text)


def whole_sentences(ids: list[int], decode: Callable[[list[int]], str], end_of_text: int) -> list[int]:
    """`ids` cut after the last complete sentence of their text: the fewest tokens that hold it. Unchanged when they
    end with the end-of-text token (the decoder ended the text itself), when the text already ends a sentence, or
    when it holds no sentence end."""
    if not ids or ids[-1] == end_of_text:
        return ids
    text = decode(ids)
    end = last_sentence_end(text)
    if end is None or not text[end:].strip():
        return ids
    return ids[: bisect_left(range(len(ids) + 1), end, key=lambda n: len(decode(ids[:n])))]
