"""What the sentiment benchmark scripts share: their common options, and continuing and judging one
condition on the benchmark prefixes as `dglm eval` does (same judge, same seeds for every method)."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

from dglm.config import EvalConfig
from dglm.data.prefixes import read_prefixes
from dglm.evaluation.harness import Scorer, continue_all, parse_condition
from dglm.interfaces import Method
from dglm.pipeline import Pipeline
from dglm.seeding import seeded_rows


def add_common_arguments(parser: argparse.ArgumentParser, prefixes: str, out: str) -> None:
    parser.add_argument("--prefixes", type=Path, default=Path(prefixes))
    parser.add_argument("--samples", type=int, default=10, help="samples per prefix and condition")
    parser.add_argument("--judge", default="data/sentiment-judge.csv", help="the sentiment judge's training data")
    parser.add_argument("--encoder-judge", default="all-mpnet-base-v2", metavar="ENCODER",
                        help="also judge on this encoder's embeddings (the sharper judge; '' for "
                             "the TF-IDF judge only)")
    parser.add_argument("--model")
    parser.add_argument("--adapter-scale", type=float, default=1.0,
                        help="merge the decoder adapter at this fraction of its trained strength (default 1)")
    parser.add_argument("--out", type=Path, default=Path(out))


@dataclass
class SentimentBench:
    config: EvalConfig
    scorer: Scorer
    pipeline: Pipeline
    rows: list[tuple[str, int]]

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> SentimentBench:
        judges = {"sentiment": args.judge}
        if args.encoder_judge:
            judges[f"sentiment@{args.encoder_judge}"] = args.judge
        config = EvalConfig(prefixes=str(args.prefixes), num_samples=args.samples, judges=judges)
        rows = seeded_rows(read_prefixes(args.prefixes), args.samples, config.seed)
        return cls(config, Scorer(config), Pipeline.from_pretrained(args.model, adapter_scale=args.adapter_scale), rows)

    def judge(self, method: Method, condition: str, desc: str) -> dict:
        """Continue every row with `method` under `condition` and score the continuations; the scores include
        the generation's wall time per sample (`seconds_per_sample`, judging left out)."""
        return self.judge_with_texts(method, condition, desc)[0]

    def judge_with_texts(self, method: Method, condition: str, desc: str) -> tuple[dict, list[str]]:
        """`judge`, and the continuations themselves (to read, or to keep)."""
        constraints = parse_condition(condition)
        start = time.perf_counter()
        continuations = continue_all(method, self.rows, constraints, self.config.max_new_tokens, self.config.batch_size,
                                     desc)
        seconds = (time.perf_counter() - start) / len(self.rows)
        scores = self.scorer([p for p, _ in self.rows], continuations, constraints)
        return {**scores, "seconds_per_sample": seconds}, continuations
