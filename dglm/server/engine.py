"""The batching engine behind `dglm serve`: one worker thread that gathers concurrent requests into batches.

Requests arrive from the web server's event loop as `Job`s (one row per sample); the worker takes the rows
that have waited longest, waits at most `max_wait_ms` for company, and runs up to `max_batch_size` rows that
share a diffusion schedule through `Pipeline.generate_rows` in one batch. Each row's text depends on its
seed only (see `dglm.seeding`), so a request gets the same text whether it was served alone or batched.
All model and tokenizer work happens on the worker thread; the event loop only passes messages.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

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
    prompt_tokens: int = 0  # filled in by the worker (the tokenizer lives on its thread)
    arrived: float = field(default_factory=time.monotonic)


class EngineClosed(Exception):
    """The server is shutting down and takes no new work."""


class BatchingEngine:
    def __init__(self, pipeline: Pipeline, max_batch_size: int = 32, max_wait_ms: float = 20.0,
                 metrics: ServerMetrics | None = None):
        self.pipeline = pipeline
        self.metrics = metrics or ServerMetrics()
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000
        self.waiting: list[tuple[Job, int]] = []  # (job, row index), oldest first
        self.condition = threading.Condition()
        self.closed = False
        self.batch_sizes: list[int] = []  # one entry per batch run, for monitoring and tests
        self.decode_steps = 0  # decoder steps run, all batches together
        self.running = False  # a batch is being generated
        self.thread = threading.Thread(target=self._work, name="dglm-batching", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        with self.condition:
            if self.closed:
                raise EngineClosed("the server is shutting down; retry against another instance")
            self.waiting += [(job, index) for index in range(len(job.rows))]
            self.condition.notify()

    def close(self, timeout: float | None = None) -> None:
        """Take no new jobs, fail those still waiting, and let the batch in progress finish."""
        with self.condition:
            self.closed = True
            left, self.waiting = self.waiting, []
            self.condition.notify()
        for job in distinct_jobs(left):
            job.emit(Failed("the server shut down before this request was served; send it again", 503))
        self.thread.join(timeout)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no row is waiting and no batch is running (a draining server stops after this); True if idle."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.condition:
                if not self.running and not any(not job.cancelled for job, _ in self.waiting):
                    return True
            time.sleep(0.05)
        return False

    # ---- the worker thread ----------------------------------------------------------------
    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                self._run_isolating_failures(batch)
            finally:
                self.running = False

    def _run_isolating_failures(self, batch: list[tuple[Job, int]]) -> None:
        """Run a batch; if it fails and holds several requests, run each alone, so that one request whose settings
        break generation (a weight that overflows, say) fails by itself and the others are served as usual."""
        try:
            self._run(batch)
            return
        except Exception as error:  # a request or a bug must fail its requests, never the worker
            jobs = distinct_jobs(batch)
            if len(jobs) > 1:
                for job in jobs:
                    self._run_isolating_failures([(j, index) for j, index in batch if j is job])
                return
            if isinstance(error, DglmError):  # what the request asked for cannot be generated: the client's to fix
                jobs[0].emit(Failed(str(error), 400))
                return
            log.exception("a batch failed")
            jobs[0].emit(Failed("generation failed inside the server; its log says why"))

    def _next_batch(self) -> list[tuple[Job, int]] | None:
        """The next rows to run: those sharing the oldest row's schedule, once the batch is full or the oldest
        row has waited `max_wait`; None when the engine is closed."""
        with self.condition:
            while not self.waiting and not self.closed:
                self.condition.wait()
            if self.closed:
                return None
            self.waiting = [(job, index) for job, index in self.waiting if not job.cancelled]
            if not self.waiting:
                return []
            key = batch_key(self.waiting[0][0].rows[self.waiting[0][1]])
            deadline = self.waiting[0][0].arrived + self.max_wait
            while not self.closed and time.monotonic() < deadline and self._count(key) < self.max_batch_size:
                self.condition.wait(deadline - time.monotonic())
            batch, rest = [], []
            for job, index in self.waiting:
                fits = len(batch) < self.max_batch_size and batch_key(job.rows[index]) == key and not job.cancelled
                (batch if fits else rest).append((job, index))
            self.waiting = rest
            self.running = bool(batch)
            return batch

    def _count(self, key: tuple) -> int:
        return sum(batch_key(job.rows[index]) == key for job, index in self.waiting)

    def _run(self, batch: list[tuple[Job, int]]) -> None:
        decoder = self.pipeline.decoder
        for job in distinct_jobs(batch):  # a request that cannot run fails alone
            try:
                self.pipeline.check_fits(job.rows)
            except DglmError as error:
                job.cancelled = True
                job.emit(Failed(str(error), 400))
        batch = [(job, index) for job, index in batch if not job.cancelled]
        if not batch:
            return
        for job in [job for job, index in batch if index == 0]:  # each job once: its first row
            prompts = dict.fromkeys(row.prefix for row in job.rows)
            job.prompt_tokens = sum(decoder.count_tokens(prefix) for prefix in prompts)
            self.metrics.prompt_tokens.inc(job.prompt_tokens)
            self.metrics.queue_wait.observe(time.monotonic() - job.arrived)
        sent = [""] * len(batch)  # the text streamed so far, per row
        cut: list[str | None] = [None] * len(batch)  # a row's text up to its stop string, once it wrote one
        recorders = [LogprobRecorder(decoder.decode, job.logprobs) if job.logprobs is not None else None
                     for job, _ in batch]
        eos = decoder.tokenizer.eos_token_id

        tokens_sent = [0] * len(batch)  # per row, the logprobs entries streamed so far

        def on_step(generated: torch.Tensor, finished: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
            self.decode_steps += 1
            for row, recorder in enumerate(recorders):
                token = int(generated[row, -1])
                if recorder is not None and cut[row] is None and token != eos:  # eos: the row has ended
                    recorder.add(token, torch.log_softmax(logits[row].float(), dim=-1).cpu())
            for row, (job, index) in enumerate(batch):
                if job.cancelled or cut[row] is not None or not (job.stream or job.stop):
                    continue
                text = decoder.decode(generated[row].tolist()).rstrip("\ufffd")  # wait for a character's last byte
                if job.stop:
                    at = first_stop(text, job.stop)
                    if at is not None:
                        text = cut[row] = text[:at]
                    else:  # hold back what could be the start of a stop string
                        text = text[: len(text) - held_back(text, job.stop)]
                if job.stream and len(text) > len(sent[row]) and text.startswith(sent[row]):
                    whole = recorders[row].tokens(text, complete=True)[tokens_sent[row]:] if recorders[row] else None
                    tokens_sent[row] += len(whole or [])
                    job.emit(Delta(index, text[len(sent[row]):], whole))
                    sent[row] = text
            return torch.tensor([job.cancelled or cut[row] is not None for row, (job, _) in enumerate(batch)])

        self.batch_sizes.append(len(batch))
        self.metrics.batch_size.observe(len(batch))
        rows = [job.rows[index] for job, index in batch]
        whole = written_whole(rows[0])  # a batch holds rows written whole, or none (`batch_key`)
        token_ids = self.pipeline.generate_rows(rows, on_step=None if whole else on_step)
        texts = [decoder.decode(ids) if cut[row] is None else cut[row] for row, ids in enumerate(token_ids)]
        if whole:  # the text is known only now: stop strings cut it whole, and a stream gets it in one piece
            for row, (job, _) in enumerate(batch):
                at = first_stop(texts[row], job.stop)
                if at is not None:
                    texts[row] = cut[row] = texts[row][:at]
        wanted = [row for row, (job, _) in enumerate(batch) if job.scores and not job.cancelled]
        scores = dict(zip(wanted, self.pipeline.attribute_scores([texts[row] for row in wanted]))) if wanted else {}
        for row, (job, index) in enumerate(batch):
            if job.cancelled:
                continue
            ids = token_ids[row]
            stopped = bool(ids) and ids[-1] == eos
            self.metrics.completion_tokens.inc(len(ids) - stopped)
            reason = "stop" if stopped or cut[row] is not None else "length"
            recorder = recorders[row]
            job.emit(Finished(index, texts[row], len(ids) - stopped, reason, scores.get(row),
                              recorder and recorder.tokens(texts[row])))


def batch_key(row: Row) -> tuple:
    """What rows must share to be decoded together: the diffusion schedule, and whether they are written whole."""
    return row.schedule_key, written_whole(row)


def written_whole(row: Row) -> bool:
    """Whether a row's text is known only once it is written: it chooses among candidates, or is written in segments
    (each planned after the last is written). Such rows are decoded without streaming; a stream gets the text in one
    piece at the end."""
    return row.diffusion.candidates > 1 or row.diffusion.segment_tokens > 0


def held_back(text: str, stops: list[str]) -> int:
    """How many characters at the end of `text` could be the beginning of a stop string (not streamed yet)."""
    return max((n for stop in stops for n in range(1, len(stop)) if text.endswith(stop[:n])), default=0)


def distinct_jobs(rows) -> list[Job]:
    """The jobs of (job, row index) pairs, each once, in order."""
    return list({id(job): job for job, _ in rows}.values())
