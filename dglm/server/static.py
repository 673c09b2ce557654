"""Static batching for `dglm serve --batching static`: the worker takes the rows that have waited longest, waits at
most `max_wait_ms` for company, and runs up to `max_batch_size` rows that share a diffusion schedule through
`Pipeline.generate_rows` to the end of the batch. A request that arrives meanwhile waits for the whole batch; the
continuous engine (`dglm.server.continuous`, the default) does not. Kept to compare against, and for decoders whose
key-value cache rows cannot join."""

from __future__ import annotations

import time

import torch

from dglm.errors import DglmError
from dglm.pipeline import Row
from dglm.segments import written_in_segments
from dglm.server.engine import ChoiceText, Engine, Job, distinct_jobs, log


class StaticEngine(Engine):
    streams_segments = False  # rows written in segments are decoded whole; a stream gets their text at the end

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
                jobs[0].fail(str(error), 400)
                return
            log.exception("a batch failed")
            jobs[0].fail()

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
            self.note_queue()
            self.running = bool(batch)
            return batch

    def _count(self, key: tuple) -> int:
        return sum(batch_key(job.rows[index]) == key for job, index in self.waiting)

    def _run(self, batch: list[tuple[Job, int]]) -> None:
        batch = self.start_jobs(batch)
        if not batch:
            return
        decoder = self.pipeline.decoder
        choices = [ChoiceText(job, index, decoder.decode) for job, index in batch]
        eos = decoder.tokenizer.eos_token_id

        def on_step(generated: torch.Tensor, finished: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
            self.note_step(len(batch))
            for row, choice in enumerate(choices):
                choice.add(generated[row].tolist(), int(generated[row, -1]), logits[row], eos)
            return torch.tensor([choice.ended for choice in choices])

        self.note_batch(len(batch))
        rows = [job.rows[index] for job, index in batch]
        whole = written_whole(rows[0])  # a batch holds rows written whole, or none (`batch_key`)
        token_ids = self.pipeline.generate_rows(rows, on_step=None if whole else on_step)
        self.finish(choices, token_ids, [whole] * len(batch))


def batch_key(row: Row) -> tuple:
    """What rows must share to be decoded together: the diffusion schedule, and whether they are written whole."""
    return row.schedule_key, written_whole(row)


def written_whole(row: Row) -> bool:
    """Whether a row's text is known only once it is written: it chooses among candidates, or is written in segments
    (each planned after the last is written). Such rows are decoded without streaming; a stream gets the text in one
    piece at the end."""
    return row.diffusion.candidates > 1 or written_in_segments(row)
