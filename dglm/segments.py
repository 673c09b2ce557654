"""Long text in segments: write a stretch, plan again from everything written so far, and go on.

The model was trained on continuations of about 21 tokens, so one proposed meaning covers about one sentence; past
it, nothing plans the text. With `segment_tokens`, a continuation longer than that is written in segments: each
segment's meaning is proposed anew by the diffusion, under the same attributes (after the first segment, guided at
`segment_guidance` times the scale: the text so far already carries them), conditioned on the prefix and the text so
far (its most recent words, past the encoder's window), and the decoder writes the segment with that whole
text as its context and the new segment's soft prompts after it (the earlier segments' soft prompts are not kept:
they were read while writing their own segment). The decoder's context is what it read before the last segment
followed by the tokens it wrote in it (`segment_context`): it reads only those, not the whole text again, and reads
its own tokens rather than the text tokenized anew. With `segment_end="sentence"` a segment ends at its first token
that ends a sentence (within `segment_tokens`), so that each plan starts a sentence. Segment s of a sample draws from
`seeding.segment_seed(seed, s)`, so its text still depends on its seed alone; segment 0 is what one plan draws.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from dglm.seeding import segment_seed
from dglm.stages.sampling import Continued, ReadContext


def written_in_segments(row: Any) -> bool:
    """Whether a row is written in segments: it asks for more tokens than a segment holds (`segment_tokens` 0 plans
    the whole continuation once)."""
    segment = row.diffusion.segment_tokens
    return bool(segment) and row.decoding.max_new_tokens > segment


def write_in_segments(rows: list[Any], segment_tokens: int, write: Callable, decode: Callable[[list[int]], str],
                      end_of_text: int) -> list[list[int]]:
    """Each row's token ids, written `segment_tokens` at a time by `write(rows, contexts, seeds, decodings,
    in_segments=True, reading=...)` (`Pipeline.write`) until the row's `max_new_tokens` or its end-of-text token."""
    written: list[list[int]] = [[] for _ in rows]
    last: list[list[int]] = [[] for _ in rows]  # each row's last segment
    read: list[ReadContext | None] = [None] * len(rows)  # what the decoder read before it
    ended = [False] * len(rows)
    segment = 0
    while True:
        active = [i for i, row in enumerate(rows) if not ended[i] and len(written[i]) < row.decoding.max_new_tokens]
        if not active:
            return written
        plans = [next_segment(rows[i], written[i], segment, segment_tokens, decode) for i in active]
        segment_rows, contexts, seeds, decodings = (list(part) for part in zip(*plans))
        reading = [segment_context(context, read[i], last[i]) for i, context in zip(active, contexts)]
        token_ids, reads = write(segment_rows, contexts, seeds, decodings, in_segments=True, reading=reading)
        for i, ids, row_read in zip(active, token_ids, reads):
            written[i] += ids
            ended[i] = not ids or ids[-1] == end_of_text
            last[i], read[i] = ids, None if ended[i] else row_read
        segment += 1


def next_segment(row: Any, written: list[int], segment: int, segment_tokens: int,
                 decode: Callable[[list[int]], str]) -> tuple[Any, str, int, Any]:
    """What segment `segment` of a row is written from, once `written` is: the row as this segment plans it (after
    the first, guided at `segment_guidance` times its scale), its context (the prefix and the text so far), its seed,
    and its decoding settings (at most `segment_tokens` new tokens, within the row's `max_new_tokens`)."""
    left = row.decoding.max_new_tokens - len(written)
    diffusion = row.diffusion
    planned = row if segment == 0 else dataclasses.replace(
        row, diffusion=diffusion.updated(guidance_scale=diffusion.guidance_scale * diffusion.segment_guidance))
    return (planned, row.prefix + decode(written), segment_seed(row.seed, segment),
            row.decoding.updated(max_new_tokens=min(segment_tokens, left)))


def segment_context(text: str, read: ReadContext | None, last: list[int]) -> str | Continued:
    """What the decoder reads before a segment: what it read before the last segment, then the last segment's tokens;
    the text itself for the first segment, or when the decoder's key-value cache cannot be kept."""
    return text if read is None or read.keys is None else Continued(read, last)
