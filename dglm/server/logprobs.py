"""OpenAI's `logprobs` for completions: each written token's log-probability and its likeliest alternatives.

The log-probabilities are the decoder's own, with the soft prompts, before truncation, penalties, bias and
temperature, as vLLM reports them by default. Tokens are recorded as they are chosen, so a streamed choice sends
each token's entry with the first chunk that holds its text whole; the entries of all chunks join up to the text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

MAX_LOGPROBS = 20  # the most alternatives a request may ask for (vLLM's default limit; OpenAI's legacy API took 5)


@dataclass
class TokenLogprob:
    text: str  # the token's text in the choice (empty for a token that ends inside a character)
    offset: int  # where that text starts in the choice's text
    logprob: float
    top: dict[str, float]  # the likeliest tokens' log-probabilities, and the chosen one's


@dataclass
class Recorded:
    token: int
    offset: int  # the length of the text before it (without a trailing incomplete character)
    logprob: float
    top: dict[str, float]


class LogprobRecorder:
    """One choice's tokens and their log-probabilities, recorded one step at a time.

    A token's text is the stretch of the choice's text from its offset to the next token's, so that the tokens
    always join up to the text, even where one character's bytes are split over several tokens.
    """

    def __init__(self, decode: Callable[[list[int]], str], top: int):
        self.decode, self.top = decode, top
        self.ids: list[int] = []
        self.recorded: list[Recorded] = []
        self.length = 0  # of the text so far, without a trailing incomplete character: where the next token starts

    def add(self, token: int, log_probs: torch.Tensor) -> None:
        """Record the chosen `token` under the step's log-probabilities (one row of the vocabulary)."""
        self.ids.append(token)
        top: dict[str, float] = {}
        values, ids = log_probs.topk(self.top) if self.top else (torch.empty(0), torch.empty(0, dtype=torch.long))
        for value, candidate in [*zip(values.tolist(), ids.tolist()), (float(log_probs[token]), token)]:
            top.setdefault(self.decode([candidate]), round(value, 4))  # tokens that read alike keep the likeliest
        self.recorded.append(Recorded(token, self.length, round(float(log_probs[token]), 4), top))
        self.length = len(self.decode(self.ids).rstrip("\ufffd"))

    def tokens(self, text: str, complete: bool = False) -> list[TokenLogprob]:
        """The tokens of `text`: the choice's text in full (cut at a stop string, if any), or, with `complete`, the
        text streamed so far, of which only the tokens it holds whole (a token cut by text held back waits)."""
        ends = [r.offset for r in self.recorded[1:]] + [self.length if complete else len(text)]
        return [TokenLogprob(text[r.offset : min(end, len(text))], r.offset, r.logprob, r.top)
                for r, end in zip(self.recorded, ends) if r.offset < len(text) and (not complete or end <= len(text))]


def openai_logprobs(tokens: list[TokenLogprob]) -> dict[str, Any]:
    """The `logprobs` object of a completion choice, in OpenAI's shape."""
    return {"tokens": [t.text for t in tokens], "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [t.top for t in tokens], "text_offset": [t.offset for t in tokens]}
