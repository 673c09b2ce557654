"""What `dglm serve`'s two batching engines share: the events a request's choices produce, the request itself (`Job`),
the queue of waiting rows with its cap, and a choice's text as it is decoded (streaming, stop strings, logprobs).

The engines differ in when rows run: `dglm.server.continuous` (the default) lets requests join the rows already
decoding at the next token step, and rows leave as soon as they end; `dglm.server.static` gathers requests into a
batch that runs to its end. Either way each row's text depends on its seed only (see `dglm.seeding`), so a request
gets the same text whether it was served alone or beside others. All model and tokenizer work happens on the engine's
threads (the worker, and for continuous batching its planning thread); the event loop only passes messages.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from dglm.endings import last_sentence_end
from dglm.errors import DglmError
from dglm.inputs import first_stop
from dglm.pipeline import Pipeline, Row
from dglm.server.logprobs import LogprobRecorder, TokenLogprob
from dglm.server.metrics import ServerMetrics

log = logging.getLogger("dglm.server")


@dataclass
class Delta:
    """New text for one choice, while it is decoded (streaming requests only)."""

    index: int
    text: str
    logprobs: list[TokenLogprob] | None = None  # the tokens of `text`, when the request asked for logprobs


@dataclass
class Finished:
    """One choice is complete."""

    index: int
    text: str
    completion_tokens: int
    finish_reason: str  # "stop" (end of text) or "length"
    scores: dict[str, dict[str, float]] | None = None
    logprobs: list[TokenLogprob] | None = None  # every token of `text`, when the request asked for logprobs


@dataclass
class Failed:
    """The request cannot be completed; `status` is the HTTP status to answer with."""

    message: str
    status: int = 500


Event = Delta | Finished | Failed
INTERNAL_FAILURE = "generation failed inside the server; its log says why"  # what a client hears of a bug


@dataclass
class Job:
    """One completion request: its rows, whether it streams and wants scores, and where its events go.

    `emit` is called from the worker thread; the web layer makes it hand the event to its event loop."""

    rows: list[Row]
    emit: Callable[[Event], None]
    stream: bool = False
    scores: bool = False
    stop: list[str] = field(default_factory=list)  # a choice ends before the first of these it writes
    logprobs: int | None = None  # report each token's log-probability and this many alternatives (None: don't)
    cancelled: bool = False  # set by the web layer when the client goes away or time runs out
    prompt_tokens: int = 0  # filled in by the worker, which takes the job from the queue
    arrived: float = field(default_factory=time.monotonic)
    started: bool = False  # its first row has been taken from the queue

    def fail(self, message: str = INTERNAL_FAILURE, status: int = 500) -> None:
        """End the request with an error: its rows stop being generated and the client is answered `status`."""
        self.cancelled = True
        self.emit(Failed(message, status))


class EngineClosed(Exception):
    """The server is shutting down and takes no new work."""


class QueueFull(Exception):
    """Too many requests are waiting; the client should retry after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class Engine:
    """The queue both engines take rows from, and the worker thread that runs `_work` (each engine's own).

    `max_batch_size` caps the rows decoded together, `max_queue` the requests waiting (a full queue refuses new ones
    with `QueueFull`: HTTP 429). Subclasses set up their own state before calling this constructor, which starts the
    worker."""

    def __init__(self, pipeline: Pipeline, max_batch_size: int = 32, max_wait_ms: float = 20.0,
                 metrics: ServerMetrics | None = None, max_queue: int = 256):
        self.pipeline = pipeline
        self.metrics = metrics or ServerMetrics()
        self.max_batch_size, self.max_wait, self.max_queue = max_batch_size, max_wait_ms / 1000, max_queue
        self.waiting: list[tuple[Job, int]] = []  # (job, row index), oldest first
        self.condition = threading.Condition()
        self.closed = False
        self.batch_sizes: deque[int] = deque(maxlen=4096)  # rows decoded together, most recent batches or steps
        self.decode_steps = 0  # decoder steps run, all batches together
        self.running = False  # rows are being generated
        self.thread = threading.Thread(target=self._work, name="dglm-batching", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        with self.condition:
            if self.closed:
                raise EngineClosed("the server is shutting down; retry against another instance")
            queued = len(distinct_jobs(self.waiting))
            if queued >= self.max_queue:
                raise QueueFull(f"the server is busy: {queued} requests are waiting (--max-queue); retry shortly",
                                retry_after=1)
            self.waiting += [(job, index) for index in range(len(job.rows))]
            self.note_queue()
            self.condition.notify()

    def close(self, timeout: float | None = None) -> None:
        """Take no new jobs, fail those still waiting, and let the rows in progress finish."""
        with self.condition:
            self.closed = True
            left, self.waiting = self.waiting, []
            self.condition.notify()
        for job in distinct_jobs(left):
            job.emit(Failed("the server shut down before this request was served; send it again", 503))
        self.thread.join(timeout)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no row is waiting and none is being generated (a draining server stops after this); True if
        idle."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.condition:
                if not self.running and not any(not job.cancelled for job, _ in self.waiting):
                    return True
            time.sleep(0.05)
        return False

    def _work(self) -> None:
        raise NotImplementedError

    def start_jobs(self, taken: list[tuple[Job, int]]) -> list[tuple[Job, int]]:
        """Rows just taken from the queue, less those of requests that cannot run (each such request fails alone,
        with a 400); a request's prompt tokens and queue wait are counted when its first row is taken."""
        for job in distinct_jobs(taken):
            if job.started:
                continue
            job.started = True
            try:
                self.pipeline.check_fits(job.rows)
            except DglmError as error:
                job.fail(str(error), 400)
                continue
            prompts = dict.fromkeys(row.prefix for row in job.rows)
            job.prompt_tokens = sum(self.pipeline.decoder.count_tokens(prefix) for prefix in prompts)
            self.metrics.prompt_tokens.inc(job.prompt_tokens)
            self.metrics.queue_wait.observe(time.monotonic() - job.arrived)
        return [(job, index) for job, index in taken if not job.cancelled]

    def note_queue(self) -> None:
        """Show the requests waiting on /metrics (call with the lock held)."""
        self.metrics.queue_depth.set(len(distinct_jobs(self.waiting)))

    def note_step(self, rows: int) -> None:
        """Count a decoder step over `rows` rows."""
        self.decode_steps += 1
        self.metrics.rows_in_flight.set(rows)

    def note_batch(self, rows: int) -> None:
        """Count `rows` rows decoded together (a static batch, or a continuous batch's step)."""
        self.batch_sizes.append(rows)
        self.metrics.batch_size.observe(rows)

    def finish(self, choices: list[ChoiceText], token_ids: list[list[int]], whole: list[bool]) -> None:
        """Send each choice's `Finished`: its text (cut at a stop string; a choice written `whole` is cut only now,
        once its text is known), token count, finish reason, and the scores and logprobs it asked for."""
        decoder, eos = self.pipeline.decoder, self.pipeline.decoder.tokenizer.eos_token_id
        texts = [decoder.decode(ids) if choice.cut is None else choice.cut for choice, ids in zip(choices, token_ids)]
        kept = {}  # choices cut only now: the tokens up to the one that wrote the stop string, as when streamed
        for i, choice in enumerate(choices):
            at = first_stop(texts[i], choice.job.stop) if whole[i] else None
            if at is not None:
                texts[i] = choice.cut = texts[i][:at]
                kept[i] = next(n for n in range(1, len(token_ids[i]) + 1)
                               if first_stop(decoder.decode(token_ids[i][:n]), choice.job.stop) is not None)
        wanted = [i for i, choice in enumerate(choices) if choice.job.scores and not choice.job.cancelled]
        scores = dict(zip(wanted, self.pipeline.attribute_scores([texts[i] for i in wanted]))) if wanted else {}
        for i, (choice, ids) in enumerate(zip(choices, token_ids)):
            if choice.job.cancelled:
                continue
            stopped = bool(ids) and ids[-1] == eos
            self.metrics.completion_tokens.inc(len(ids) - stopped)  # decoded, whether kept or not
            short = len(ids) < choice.job.rows[choice.index].decoding.max_new_tokens  # ended at a sentence's end
            reason = "stop" if stopped or short or choice.cut is not None else "length"
            recorder = choice.recorder
            choice.job.emit(Finished(choice.index, texts[i], kept.get(i, len(ids) - stopped), reason, scores.get(i),
                                     recorder and recorder.tokens(texts[i])))


class ChoiceText:
    """One choice's text while it is decoded: the tokens' log-probabilities (when asked for), where a stop string cut
    it, and what has been streamed."""

    def __init__(self, job: Job, index: int, decode: Callable[[list[int]], str]):
        self.job, self.index, self.decode = job, index, decode
        self.recorder = LogprobRecorder(decode, job.logprobs) if job.logprobs is not None else None
        self.cut: str | None = None  # the text up to its stop string, once it wrote one
        self.sent = ""  # the text streamed so far
        self.tokens_sent = 0  # the logprobs entries streamed so far

    @property
    def ended(self) -> bool:
        """The client went away, or the choice wrote a stop string: decoding it further is waste."""
        return self.job.cancelled or self.cut is not None

    def add(self, ids: list[int], token: int, logits: torch.Tensor, eos: int) -> None:
        """A step's `token` (the last of the choice's `ids`), drawn from the decoder's `logits`: record its
        log-probability, look for a stop string, and stream the new text."""
        if self.recorder is not None and self.cut is None and token != eos:
            self.recorder.add(token, torch.log_softmax(logits.float(), dim=-1).cpu())
        job = self.job
        if self.ended or not (job.stream or job.stop):
            return
        text = self.decode(ids).rstrip("\ufffd")  # wait for a character's last byte
        if job.stop:
            at = first_stop(text, job.stop)
            if at is not None:
                text = self.cut = text[:at]
            else:  # hold back what could be the start of a stop string
                text = text[: len(text) - held_back(text, job.stop)]
        if self.cut is None and job.rows[self.index].decoding.end_at == "sentence":
            text = text[: last_sentence_end(text, settled=True) or 0]  # what follows may be cut off at the end
        if job.stream and len(text) > len(self.sent) and text.startswith(self.sent):
            whole = self.recorder.tokens(text, complete=True)[self.tokens_sent:] if self.recorder else None
            self.tokens_sent += len(whole or [])
            job.emit(Delta(self.index, text[len(self.sent):], whole))
            self.sent = text


def held_back(text: str, stops: list[str]) -> int:
    """How many characters at the end of `text` could be the beginning of a stop string (not streamed yet)."""
    return max((n for stop in stops for n in range(1, len(stop)) if text.endswith(stop[:n])), default=0)


def distinct_jobs(rows) -> list[Job]:
    """The jobs of (job, row index) pairs, each once, in order."""
    return list({id(job): job for job, _ in rows}.values())
