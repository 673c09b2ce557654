"""The `dglm` command: a thin layer over the Python API. Every error ends in one line and exit 2.

Each command (or family of commands) is a module here with its arguments (`add_parser`) and its handler
(`cmd_*`); `build_parser` assembles them."""

from __future__ import annotations

import argparse
import os
import sys

import dglm
from dglm.cli import catalogue, data, evaluate, generate, serve, train
from dglm.errors import DglmError
from dglm.processes import leave_process_group

EXIT_STATUS = ("exit status: 0 when done; 2 for a bad argument, file or input, with one line on stderr that says what "
               "was wrong and what is accepted; 130 when interrupted (Ctrl-C)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dglm", description="Controllable text generation with Diffusion Guided "
                                     "Language Modeling.", epilog=EXIT_STATUS)
    parser.add_argument("--version", action="version", version=f"dglm {dglm.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    generate.add_parser(commands)
    serve.add_parser(commands)
    catalogue.add_parsers(commands)
    data.add_parsers(commands)
    train.add_parser(commands)
    evaluate.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries()
    threads = torch_threads()
    try:
        args.handler(args)
        leave_process_group()  # under torchrun, generate and train joined a process group
    except DglmError as error:
        print(f"dglm: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (`dglm attributes | head -2`): stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that the exit's flush cannot fail again
        return 0
    finally:
        restore_torch_threads(threads)  # --threads is the command's, not the calling program's (main() in a test)
    return 0


def quiet_libraries() -> None:
    """Keep the terminal for dglm's own output: no per-file loading bars or advice from the libraries. Until
    transformers is imported, it is told through the settings it reads then: the default model runs without it, and
    importing it only to quiet it would cost every command a second."""
    if "transformers" not in sys.modules:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        return
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()


def torch_threads() -> int | None:
    """torch's thread count, if torch is already imported (the CLI imports it only when a command needs it)."""
    return sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None


def restore_torch_threads(threads: int | None) -> None:
    if threads is not None and torch_threads() != threads:
        sys.modules["torch"].set_num_threads(threads)


if __name__ == "__main__":
    sys.exit(main())
