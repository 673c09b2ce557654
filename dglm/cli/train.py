"""`dglm train`: train the denoiser, the prompt generator, or both, from a YAML config, in resumable legs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dglm.errors import DglmError


def add_parser(commands) -> None:
    """The `train` command's arguments."""
    train = commands.add_parser(
        "train", help="train the denoiser, the prompt generator, or both, from a YAML config",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train one stage, or `all` (builds the corpus if it is missing, then the denoiser, then the prompt "
                    "generator). A run resumes exactly from its last state in the config's run_dir (same batches, "
                    "optimizer and learning-rate schedule) and writes the checkpoint to its output folder.",
        epilog="examples:\n  dglm train all --config configs/train-cpu.yaml\n  dglm train prompt-generator --config "
               "configs/train-long.yaml --max-minutes 170   # one leg\n  dglm train all --config "
               "configs/train-gpu.yaml --print-config                    # resolved config\n  accelerate launch -m "
               "dglm train denoiser --config configs/train-gpu.yaml         # several GPUs\n  torchrun "
               "--nproc_per_node 2 -m dglm train denoiser --config configs/train-cpu.yaml # two CPU processes\n",
    )
    train.add_argument("stage", choices=["denoiser", "prompt-generator", "all"], help="which part to train")
    train.add_argument("--config", type=Path, required=True, help="training YAML, e.g. configs/train-cpu.yaml")
    train.add_argument("--print-config", action="store_true",
                       help="print the fully resolved config (after `extends`) as JSON and exit")
    train.add_argument("--max-minutes", type=float, metavar="M",
                       help="end this leg after M minutes (or on SIGTERM), saving its state and checkpoint; "
                            "the same command continues the run")
    train.add_argument("--max-steps", type=int, metavar="N", help="end this leg after N optimisation steps (a short "
                                                                  "trial leg); the same command continues the run")
    train.set_defaults(handler=cmd_train)


def cmd_train(args: argparse.Namespace) -> None:
    from dglm.config import TrainConfig
    from dglm.training.loop import LegTimer
    from dglm.training.stages import train_all, train_denoiser, train_prompt_generator

    config = TrainConfig.from_yaml(args.config)
    if args.print_config:
        print(json.dumps(config.to_dict(), indent=2))
        return
    if args.max_minutes is not None and not 0 < args.max_minutes < float("inf"):
        raise DglmError(f"--max-minutes must be a positive number of minutes, got {args.max_minutes}")
    if args.max_steps is not None and args.max_steps < 1:
        raise DglmError(f"--max-steps must be a positive number of steps, got {args.max_steps}")
    trainer = {"denoiser": train_denoiser, "prompt-generator": train_prompt_generator, "all": train_all}[args.stage]
    with LegTimer(args.max_minutes, args.max_steps) as leg:
        print(f"checkpoint written to {trainer(config, str(args.config), leg)}")
