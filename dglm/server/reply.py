"""Turning a job's events (`dglm.server.engine`) into OpenAI's completion object, or into its stream of chunks."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request

from dglm.server.engine import Delta, Failed, Finished, Job
from dglm.server.logprobs import TokenLogprob, openai_logprobs
from dglm.server.protocol import ApiError


class Reply:
    """Turns a job's events into an OpenAI completion object, or into its stream of chunks."""

    def __init__(self, job: Job, events: asyncio.Queue, model: str, deadline: float, timeout_s: float,
                 echo: bool = False):
        self.job, self.events, self.model, self.deadline, self.timeout_s = job, events, model, deadline, timeout_s
        self.id, self.created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        self.sent = [""] * len(job.rows)
        self.tokens_sent = [0] * len(job.rows)  # logprobs entries streamed, per choice
        self.finished: dict[int, Finished] = {}
        self.unechoed = set(range(len(job.rows))) if echo else set()  # choices whose prompt is still to be sent

    def echoed(self, index: int, text: str) -> str:
        """`text`, after the choice's prompt the first time (OpenAI's `echo`)."""
        if index not in self.unechoed:
            return text
        self.unechoed.discard(index)
        return self.job.rows[index].prefix + text

    def chunk(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                "choices": choices, **extra}

    def choice(self, index: int, text: str, done: Finished | None, tokens: list[TokenLogprob] | None) -> dict[str, Any]:
        choice = {"index": index, "text": text, "logprobs": None if tokens is None else openai_logprobs(tokens),
                  "finish_reason": done.finish_reason if done else None}
        if done is not None:
            choice["seed"] = self.job.rows[index].seed
            if done.scores is not None:
                choice["scores"] = done.scores
        return choice

    def usage(self) -> dict[str, int]:
        completion = sum(done.completion_tokens for done in self.finished.values())
        return {"prompt_tokens": self.job.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.job.prompt_tokens + completion}

    async def next_event(self, wait: float | None = None) -> Delta | Finished | None:
        """The next event, None after `wait` seconds without one; a failure or the deadline raises ApiError."""
        remaining = self.deadline - time.monotonic()
        try:
            event = await asyncio.wait_for(self.events.get(), min(remaining, wait or remaining))
        except asyncio.TimeoutError:
            if time.monotonic() < self.deadline:
                return None
            self.job.cancelled = True
            raise ApiError(504, f"the request took longer than the server's limit of {self.timeout_s:g} s "
                                "(--request-timeout-s); ask for fewer or shorter samples", kind="timeout") from None
        if isinstance(event, Failed):
            raise ApiError(event.status, event.message,
                           kind="invalid_request_error" if event.status < 500 else "server_error")
        return event

    async def collect(self, request: Request) -> dict[str, Any]:
        try:
            while len(self.finished) < len(self.job.rows):
                event = await self.next_event(wait=1.0)
                if event is None and await request.is_disconnected():
                    self.job.cancelled = True
                    return {}
                if isinstance(event, Finished):
                    self.finished[event.index] = event
        except asyncio.CancelledError:
            self.job.cancelled = True
            raise
        choices = [self.choice(i, self.echoed(i, done.text), done, done.logprobs)
                   for i, done in sorted(self.finished.items())]
        return self.chunk(choices, usage=self.usage())

    async def stream(self, include_usage: bool) -> AsyncIterator[str]:
        try:
            while len(self.finished) < len(self.job.rows):
                try:
                    event = await self.next_event()
                except ApiError as error:
                    yield sse(json.loads(error.response().body))
                    return
                if isinstance(event, Delta):
                    self.sent[event.index] += event.text
                    self.tokens_sent[event.index] += len(event.logprobs or [])
                    yield sse(self.chunk([self.choice(event.index, self.echoed(event.index, event.text), None,
                                                      event.logprobs)]))
                elif isinstance(event, Finished):
                    self.finished[event.index] = event
                    start = len(self.sent[event.index])
                    tokens = None if event.logprobs is None else event.logprobs[self.tokens_sent[event.index]:]
                    yield sse(self.chunk([self.choice(event.index, self.echoed(event.index, event.text[start:]), event,
                                                      tokens)]))
            if include_usage:
                yield sse(self.chunk([], usage=self.usage()))
            yield "data: [DONE]\n\n"
        finally:
            if len(self.finished) < len(self.job.rows):
                self.job.cancelled = True  # the client went away: its rows leave the batch


def sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"
