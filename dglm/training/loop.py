"""The optimisation loop both stages share: exact resume, legs, warm-up + cosine learning rate, clipping,
EMA, bf16 autocast, periodic states."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from dglm.training.state import EMA, load_training_state, save_training_state


@dataclass
class StartPoint:
    """Where a stage without a resume state starts: the steps its checkpoint already holds and the seconds they took."""

    step: int = 0
    seconds: float = 0.0


@dataclass
class LoopResult:
    losses: list[float]  # the losses of the steps this run recorded
    seconds: float  # the training time, summed over the run's legs
    steps: int  # the steps done (fewer than asked when the leg ended early)


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def step_generator(seed: int, step: int, process_index: int) -> torch.Generator:
    """The random stream of one step on one process.

    Seeding every step from (seed, step, process) makes a batch depend on its step alone, so a run resumed at
    step s draws exactly what an uninterrupted run draws from step s on, and each process draws its own batches.
    """
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1024 + process_index)


class LegTimer:
    """Ends a training leg after `max_minutes`, after `max_steps` optimisation steps, or after the current step on
    SIGTERM, so that the leg saves its state and checkpoint before it stops; the same command continues the run."""

    def __init__(self, max_minutes: float | None, max_steps: int | None = None):
        self.deadline = None if max_minutes is None else time.time() + 60 * max_minutes
        self.steps_left = max_steps
        self.terminated = False
        self.previous_handler = None  # SIGTERM's handler before this leg, restored after it

    def __enter__(self) -> "LegTimer":
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():  # signals can only be caught there
            self.previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def __exit__(self, *exc) -> None:
        import signal

        if self.previous_handler is not None:
            signal.signal(signal.SIGTERM, self.previous_handler)

    def _on_sigterm(self, signum, frame) -> None:
        self.terminated = True

    def expired(self) -> bool:
        """Asked once before each step."""
        if self.steps_left is not None:
            if self.steps_left <= 0:
                return True
            self.steps_left -= 1
        return self.terminated or (self.deadline is not None and time.time() >= self.deadline)


def leg_ends(accelerator, leg: LegTimer) -> bool:
    """Whether to end the leg before this step; with several processes, all end when any must (a process that
    stopped alone would leave the others waiting for it forever)."""
    ends = leg.expired()
    if accelerator.num_processes > 1:
        flag = torch.tensor([float(ends)], device=accelerator.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        ends = bool(flag.item())
    return ends


def run_loop(accelerator, model, optimizer, stage: str, steps: int, warmup: int, checkpoint_every: int,
             state_path: Path, batch_loss, seed: int, precision: str, leg: LegTimer, ema: EMA | None = None,
             fallback: StartPoint = StartPoint()) -> LoopResult:
    """The shared optimisation loop: resume, warm-up + cosine learning rate, clipping, EMA, periodic states.

    `batch_loss(model, generator)` draws a batch from `step_generator`'s stream and returns its loss. A run
    resumed from its state continues exactly: same weights, optimizer moments, EMA, learning rate and batches.
    Without a state, `fallback` (the steps a checkpoint already holds and the seconds they took) starts the run
    there with a fresh optimizer. `precision` "bf16" runs the forward pass under bfloat16 autocast.
    """
    from tqdm.auto import tqdm

    step, losses, earlier_seconds = load_training_state(state_path, model, optimizer, ema, steps)
    if step == 0 and fallback.step:
        step, earlier_seconds = fallback.step, fallback.seconds
        for group in optimizer.param_groups:  # a fresh optimizer, joining the schedule at `step`
            group.setdefault("initial_lr", group["lr"])
    done = step
    start = time.time()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, warmup, steps),
                                                  last_epoch=step - 1)
    prepared_model, optimizer = accelerator.prepare(model, optimizer)
    autocast = torch.autocast(accelerator.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    bar = tqdm(range(step, steps), initial=step, total=steps, desc=stage, disable=not accelerator.is_main_process)
    for step in bar:
        if leg_ends(accelerator, leg):
            break
        with autocast:
            loss = batch_loss(prepared_model, step_generator(seed, step, accelerator.process_index))
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(prepared_model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update(accelerator.unwrap_model(prepared_model))
        losses.append(loss.item())
        done = step + 1
        bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
        if accelerator.is_main_process and done % checkpoint_every == 0:
            save_training_state(state_path, accelerator.unwrap_model(prepared_model), optimizer, ema, done, losses,
                                earlier_seconds + time.time() - start, steps)
    bar.close()
    seconds = earlier_seconds + time.time() - start
    if accelerator.is_main_process:
        save_training_state(state_path, accelerator.unwrap_model(prepared_model), optimizer, ema, done, losses,
                            seconds, steps)
    return LoopResult(losses, seconds, done)
