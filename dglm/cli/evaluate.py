"""`dglm eval`: every method on every condition, judged independently of the guidance."""

from __future__ import annotations

import argparse
from pathlib import Path

from dglm.cli.common import add_dtype_argument, resolve_device
from dglm.errors import DglmError


def add_parser(commands) -> None:
    """The `eval` command's arguments."""
    evaluate = commands.add_parser("eval", help="compare DGLM with baselines, judged independently of the guidance",
                                   description="Run every method on every condition (same prefixes and seeds), judge "
                                               "the texts with classifiers independent of the guidance probes, "
                                               "perplexity under a separate LM and Dist-3, and write OUT.json, OUT.md "
                                               "and the guidance trade-off plot OUT.png.")
    evaluate.add_argument("--config", type=Path, required=True, help="evaluation YAML, e.g. "
                                                                     "configs/eval/sentiment.yaml")
    evaluate.add_argument("--methods", nargs="+", metavar="METHOD",
                          help="run only these of the config's methods, e.g. `--methods dglm` after retraining (the "
                               "baselines do not depend on the checkpoint)")
    evaluate.add_argument("--model", help="checkpoint folder instead of the config's `model` (default: the bundled "
                                           "model), e.g. a newly trained one, judged with the shipped configs")
    evaluate.add_argument("--out", help="output path prefix instead of the config's `out`")
    evaluate.add_argument("--no-tradeoff", action="store_true", help="skip the guidance-scale trade-off runs")
    evaluate.add_argument("--device", default="auto",
                          help="where the methods generate: cpu, cuda, cuda:1, ... (default: cuda if available; the "
                               "judges run on the CPU); the same seed can give other text on another device")
    add_dtype_argument(evaluate)
    split = evaluate.add_mutually_exclusive_group()
    split.add_argument("--generate-only", action="store_true",
                       help="write the samples (OUT.samples.jsonl.gz) and timings without loading any judge, e.g. on a "
                            "GPU machine that lacks the judges' models; judge them later with --judge-samples")
    split.add_argument("--judge-samples", type=Path, metavar="SAMPLES",
                       help="judge the continuations of an earlier run of the same config (its OUT.samples.jsonl.gz) "
                            "instead of generating them")
    evaluate.set_defaults(handler=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> None:
    from dglm.config import EvalConfig
    from dglm.evaluation.harness import markdown_table, run_eval

    config = EvalConfig.from_yaml(args.config)
    if args.methods:
        unknown = sorted(set(args.methods) - set(config.methods))
        if unknown:
            raise DglmError(f"--methods {unknown} not in {args.config}; its methods: {', '.join(config.methods)}")
        config.methods = {name: config.methods[name] for name in args.methods}
    config.model = args.model or config.model
    config.out = args.out or config.out
    if args.no_tradeoff:
        config.tradeoff_condition = None
    print(markdown_table(run_eval(config, str(args.config), args.generate_only, args.judge_samples,
                                  resolve_device(args.device), args.dtype)))
    plot = config.tradeoff_condition and not args.generate_only
    print(f"wrote {config.out}.json, {config.out}.md, "
          f"{config.out}.samples.jsonl.gz" + (f" and {config.out}.png" if plot else ""))
