"""What several commands share: the settings' flags, the device, the decoder's number format, CPU threads and
multi-process launches."""

from __future__ import annotations

import argparse
import os

from dglm.processes import join_process_group


def add_setting_arguments(group) -> None:
    """One flag per declared generation setting (dglm.config), with its help text and accepted range."""
    from dglm.config import accepted, declared_settings

    for name, (_, spec, kind) in declared_settings().items():
        group.add_argument(f"--{name.replace('_', '-')}", type=kind, metavar=name.split("_")[-1].upper(),
                           help=f"{spec.metadata['help']} ({accepted(spec, kind)})")


def resolve_device(name: str) -> str:
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name


def launch_processes(device: str) -> str:
    """Under a multi-process launch (torchrun sets WORLD_SIZE), join its process group; the device to load the
    model on."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return resolve_device(device)
    return str(join_process_group().device)


def share_from_main(values: list, world: int) -> list:
    """The main process's values, on every process."""
    if world > 1:
        import torch.distributed as dist

        dist.broadcast_object_list(values, src=0)
    return values


def add_dtype_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="the decoder's number format (default float32). bfloat16 decodes a token about 1.7x "
                             "as fast on a CPU with AVX-512 BF16 or AMX (a whole command gains less), with text of the "
                             "same quality, but a sample's text then depends on the samples batched with it, so a seed "
                             "reproduces it only in the same batch (and --resume is refused)")


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, metavar="N", default=default_threads(),
                        help="CPU threads for torch (default: half the cores, here %(default)s; on 2 cores, 1 thread "
                             "was as fast as 2 on an idle CPU and 1.7x as fast beside another busy process)")


def default_threads() -> int:
    """Half the cores: measured on 2 cores (README, "Threads"), one thread cost nothing on an idle CPU and saved
    40% of the wall time beside another busy process."""
    return max(1, (os.cpu_count() or 2) // 2)
