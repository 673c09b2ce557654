"""Joining and leaving the process group of a multi-process launch (torchrun), for `generate` and `train`.

Leaving must free the group before the interpreter exits. Its gloo worker threads release the tensors of
finished collectives a moment after the collective returns; if that happens while Python is finalizing, the
release needs the GIL, the thread is cancelled, and the process aborts ('terminate called without an active
exception', SIGABRT). Destroying the group joins those threads, but only if nothing else still holds the
group, and `torch._dynamo` (imported with any model) keeps references to the group that exists when it is
first imported. So it is imported before joining.
"""

from __future__ import annotations

import sys


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
