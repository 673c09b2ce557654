"""Continuous batching for `dglm serve` (the default): requests join the rows already decoding at the next token
step, and a row leaves the batch as soon as it ends.

Each turn of the worker: the requests waiting are taken, as many rows as fit under `max_batch_size`, and handed to
the planning thread, which proposes their plans by the diffusion and has the decoder read them (the prefill), in
groups that share a diffusion schedule; meanwhile every row already decoding draws a token, turn after turn. Once a
group is planned it joins the running `DecodingBatch` (left-padded to its length) at the next turn, and the requests
that arrived while it was planned are taken together. Planning beside decoding uses a second core (the server
decodes with one torch thread by default) instead of stalling every row for each arrival. A row that ends (its
length, end of text, a stop string, its client gone, its request timed out) leaves at once. With candidates, each of
a sample's drafts is a row, and the sample is chosen when its last draft ends; with segments, a sample whose segment
ended is planned again from its text so far and joins again. `max_wait_ms` matters only when nothing is decoding:
the first request then waits that long for others to be prefilled with it.

A row's text depends on its seed and settings only: it draws from its own generator, and is filtered and penalised
alone (`dglm.stages.sampling`).
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import torch

from dglm.errors import DglmError
from dglm.pipeline import Row, Writing
from dglm.segments import next_segment, segment_context, written_in_segments
from dglm.server.engine import ChoiceText, Engine, distinct_jobs, log
from dglm.stages.sampling import NOT_FINITE, DecodingBatch, ReadContext


@dataclass
class InFlight:
    """One choice of a request while it is written: the tokens of its segments so far, the segment being written,
    the drafts of that segment that have ended (with candidates), and its text as streamed."""

    text: ChoiceText
    written: list[int] = field(default_factory=list)
    segment: int = 0
    drafts: dict[int, list[int]] = field(default_factory=dict)  # candidate -> its tokens
    read: torch.Tensor | None = None  # the embedding of the segment's context (what choosing compares with)
    context: ReadContext | None = None  # what the decoder read before the last segment
    last: list[int] = field(default_factory=list)  # the last segment's tokens

    @property
    def row(self) -> Row:
        return self.text.job.rows[self.text.index]

    @property
    def candidates(self) -> int:
        return self.row.diffusion.candidates

    @property
    def in_segments(self) -> bool:
        return written_in_segments(self.row)


class ContinuousEngine(Engine):
    streams_segments = True  # a choice with one candidate streams token by token, in segments or not

    def __init__(self, *args, **kwargs):
        self.batch: DecodingBatch | None = None
        self.slots: list[tuple[InFlight, int]] = []  # the batch's rows: (choice, candidate)
        self.replanning: list[InFlight] = []  # choices whose next segment is to be planned
        self.planner = ThreadPoolExecutor(1, thread_name_prefix="dglm-planning")
        self.planning: tuple[list[InFlight], Future] | None = None  # the choices being planned, and their plans
        super().__init__(*args, **kwargs)

    # ---- the worker thread ----------------------------------------------------------------
    def _work(self) -> None:
        while (taken := self._take()) is not None:
            try:
                if taken:
                    self.planning = taken, self.planner.submit(self._plan, taken)
                with torch.no_grad():
                    self._join_planned()
                    if self.slots:
                        self._step()
            except Exception:  # a bug must fail the requests in flight, never the worker
                log.exception("continuous batching failed")
                in_flight = [c for c, _ in self.slots] + (self.planning[0] if self.planning else []) + taken
                for job in {id(c.text.job): c.text.job for c in in_flight}.values():
                    job.fail()
                if self.planning:
                    wait([self.planning[1]])  # let a plan in progress end before the engine counts as idle
                self.batch, self.slots, self.planning = None, [], None
            finally:
                with self.condition:
                    self.running = bool(self.slots or self.replanning or self.planning)
        self.planner.shutdown()

    def _take(self) -> list[InFlight] | None:
        """The choices to plan this turn: those starting a new segment, then waiting rows in arrival order, as many as
        fit beside the rows decoding; None when the engine is closed and nothing is left in flight."""
        with self.condition:
            while not (self.waiting or self.replanning or self.slots or self.planning or self.closed):
                self.condition.wait()
            if self.closed and not (self.replanning or self.slots or self.planning):
                return None
            if self.planning:  # those arriving meanwhile are planned together once it is done
                return []
            if not self.slots and not self.replanning and self.waiting:  # idle: wait a little for company
                deadline = self.waiting[0][0].arrived + self.max_wait
                while not self.closed and time.monotonic() < deadline and len(self.waiting) < self.max_batch_size:
                    self.condition.wait(deadline - time.monotonic())
            taken, self.replanning = self.replanning, []
            free = self.max_batch_size - len(self.slots) - sum(choice.candidates for choice in taken)
            rows = []
            while self.waiting and not self.closed:
                job, index = self.waiting[0]
                need = job.rows[index].diffusion.candidates
                if not job.cancelled and need > free and (self.slots or taken or rows):
                    break  # the oldest waits for room; those behind it wait too, in order
                self.waiting.pop(0)
                if not job.cancelled:
                    rows.append((job, index))
                    free -= need
            self.note_queue()
            self.running = True
        decode = self.pipeline.decoder.decode
        return taken + [InFlight(ChoiceText(job, index, decode)) for job, index in self.start_jobs(rows)]

    def _join_planned(self) -> None:
        """Add the planned rows to the running batch once their plans are ready (waiting for them when nothing else
        is decoding)."""
        if self.planning is None or (self.slots and not self.planning[1].done()):
            return
        for group, writing in self.planning[1].result():
            try:
                if self.batch is None:
                    self.batch = writing.batch
                else:
                    self.batch.join(writing.batch)
            except DglmError as error:  # a decoder whose cache cannot be joined: these requests fail, others go on
                for job in distinct_jobs([(choice.text.job, 0) for choice in group]):
                    job.fail(str(error), 400)
                continue
            self.slots += [(group[index], candidate) for index, candidate in writing.drafts]
        self.planning = None  # only now: until every group has joined, a failure fails them all

    def _step(self) -> None:
        """Every row draws a token; rows that end leave, choices that are complete are sent."""
        batch, eos = self.batch, self.pipeline.decoder.tokenizer.eos_token_id
        broken = batch.sample()
        self.note_step(len(batch))
        self.note_batch(len(batch))
        ended = []
        for row, (choice, _) in enumerate(self.slots):
            job = choice.text.job
            if bool(broken[row]) and not job.cancelled:
                job.fail(NOT_FINITE, 400)
            if choice.candidates == 1 and not job.cancelled:
                choice.text.add(choice.written + batch.tokens[row], int(batch.last[row]), batch.logits[row], eos)
            if bool(batch.finished[row]) or choice.text.ended:
                ended.append(row)
        complete = [done for row in ended if (done := self._ended(row)) is not None]
        if complete:
            self.finish([c.text for c in complete], [c.written for c in complete],
                        [c.candidates > 1 for c in complete])
        if ended:  # leaving copies the cache: only when some row leaves
            keep = sorted(set(range(len(self.slots))) - set(ended))
            batch.keep(keep)
            self.slots = [self.slots[row] for row in keep]
        if self.slots:
            batch.advance()
        else:
            self.batch = None

    def _ended(self, row: int) -> InFlight | None:
        """A row has ended: keep its tokens, choose among a sample's drafts once all have ended, and say whether the
        choice is complete (returned) or goes on to its next segment."""
        choice, candidate = self.slots[row]
        if choice.text.job.cancelled:
            return None
        tokens = self.batch.tokens[row]
        if choice.candidates > 1:
            choice.drafts[candidate] = tokens
            if len(choice.drafts) < choice.candidates:
                return None
            options = [choice.drafts[c] for c in range(choice.candidates)]
            choice.drafts = {}
            decode = self.pipeline.decoder.decode
            texts = [decode(ids) for ids in options]
            tokens = options[self.pipeline.choose_candidate(choice.row, texts, choice.read, decode(choice.written))]
        choice.written += tokens
        eos = self.pipeline.decoder.tokenizer.eos_token_id
        if (choice.in_segments and choice.text.cut is None and tokens and tokens[-1] != eos
                and len(choice.written) < choice.row.decoding.max_new_tokens):
            choice.segment += 1
            choice.context, choice.last = self.batch.contexts[row], tokens
            self.replanning.append(choice)
            return None
        choice.written = self.pipeline.ended(choice.row, choice.written)
        return choice

    # ---- the planning thread --------------------------------------------------------------
    def _plan(self, choices: list[InFlight]) -> list[tuple[list[InFlight], Writing]]:
        """Propose and prefill the choices' next plans, in groups that share a diffusion schedule: each group, and its
        rows ready to decode."""
        groups: dict[tuple, list[InFlight]] = {}
        for choice in choices:
            if not choice.text.ended:
                groups.setdefault((choice.row.schedule_key, choice.in_segments), []).append(choice)
        with torch.no_grad():  # a thread's own switch: the worker's does not reach here
            return [planned for (_, in_segments), group in groups.items()
                    for planned in self._plan_isolating_failures(group, in_segments)]

    def _plan_isolating_failures(self, group: list[InFlight],
                                 in_segments: bool) -> list[tuple[list[InFlight], Writing]]:
        """Plan a group; if that fails and the group holds several requests, plan each alone, so that one request
        whose settings break generation fails by itself."""
        try:
            return [(group, self._plan_group(group, in_segments))]
        except Exception as error:
            jobs = distinct_jobs([(choice.text.job, 0) for choice in group])
            if len(jobs) > 1:
                return [planned for job in jobs
                        for planned in self._plan_isolating_failures([c for c in group if c.text.job is job],
                                                                     in_segments)]
            if isinstance(error, DglmError):
                jobs[0].fail(str(error), 400)
                return []
            log.exception("planning a request failed")
            jobs[0].fail()
            return []

    def _plan_group(self, group: list[InFlight], in_segments: bool) -> Writing:
        decode = self.pipeline.decoder.decode
        if in_segments:
            plans = [next_segment(c.row, c.written, c.segment, c.row.diffusion.segment_tokens, decode) for c in group]
        else:
            plans = [(c.row, c.row.prefix, c.row.seed, c.row.decoding) for c in group]
        rows, contexts, seeds, decodings = (list(part) for part in zip(*plans))
        reading = [segment_context(text, c.context, c.last) for c, text in zip(group, contexts)]
        writing = self.pipeline.start_writing(rows, contexts, seeds, decodings, in_segments, reading=reading)
        for choice, read in zip(group, writing.read):
            choice.read = read
        return writing
