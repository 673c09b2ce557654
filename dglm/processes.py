"""Joining and leaving the process group of a multi-process launch (torchrun), for `generate` and `train`, and
sharing work and seeds over its processes.

Leaving must free the group before the interpreter exits. Its gloo worker threads release the tensors of
finished collectives a moment after the collective returns; if that happens while Python is finalizing, the
release needs the GIL, the thread is cancelled, and the process aborts ('terminate called without an active
exception', SIGABRT). Destroying the group joins those threads, but only if nothing else still holds the
group, and `torch._dynamo` (imported with any model) keeps references to the group that exists when it is
first imported. So it is imported before joining.
"""

from __future__ import annotations

import itertools
import random
import sys
from collections.abc import Iterable, Iterator
from typing import Any


def join_process_group():
    """Join the launch's group through accelerate, each process on its own GPU when there are GPUs (on the CPU
    otherwise); the `Accelerator`."""
    import torch
    import torch._dynamo  # noqa: F401  before the group exists, so that it holds no reference to it
    from accelerate import Accelerator

    return Accelerator(cpu=not torch.cuda.is_available())


def leave_process_group() -> None:
    """Free the group on every process together (see the module's docstring). Commands that never imported
    torch.distributed have no group to leave."""
    distributed = sys.modules.get("torch.distributed")
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        distributed.barrier()
        distributed.destroy_process_group()


def chunks(items: Iterable, size: int) -> Iterator[list]:
    """Consecutive lists of `size` items (the last may be shorter), read lazily."""
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def process_group() -> tuple[int, int]:
    """(number of processes, this one's rank) of a multi-process launch; (1, 0) otherwise."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def shared_seed(seed: int | None, world: int) -> int:
    """The given seed, or a random one that every process of the launch agrees on."""
    if seed is not None:
        return seed
    drawn = [random.randrange(2**31)]
    if world > 1:
        import torch.distributed as dist

        dist.broadcast_object_list(drawn, src=0)
    return drawn[0]


def gather_to_main(samples: list[Any], world: int, rank: int) -> list[list[Any]]:
    """Every process's samples of this round, in rank order, on the main process; nothing on the others."""
    if world == 1:
        return [samples]
    import torch.distributed as dist

    parts: list[list[Any] | None] = [None] * world if rank == 0 else None
    dist.gather_object(samples, parts, dst=0)
    return parts if rank == 0 else []

