"""Which sampler, and how many steps? DDIM and DPM-Solver++ (2M) at 5, 10, 20 and 50 diffusion steps on the
bundled checkpoint, judged as `dglm eval` judges: sentiment control both ways (share judged positive, with
its standard error), perplexity under Gemma 3 270M against plain sampling with the same decoding, Dist-3,
and seconds per sample. Runs on the development prefixes by default, so that the default it chooses is not
fitted to the benchmark prefixes. Run it on an otherwise idle CPU:

    python benchmarks/samplers.py --samples 10
"""

from __future__ import annotations

import argparse
import json
import math

from dglm.evaluation.bench import SentimentBench, add_common_arguments
from dglm.plugins import get_methods

SAMPLERS = ("ddim", "dpmsolver++")
STEPS = (5, 10, 20, 50)


def standard_error(share: float, count: int) -> float:
    return math.sqrt(share * (1 - share) / count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, prefixes="benchmarks/prefixes-dev.txt", out="benchmarks/results/samplers.json")
    parser.add_argument("--steps", type=int, nargs="+", default=list(STEPS))
    args = parser.parse_args()

    bench = SentimentBench.from_args(args)
    pipeline, count = bench.pipeline, len(bench.rows)
    defaults = pipeline.config.diffusion
    plain = bench.judge(get_methods()["plain"](pipeline), "none", "plain")
    report: dict = {"samples_per_condition": count, "prefixes": str(args.prefixes),
                    "plain_perplexity_median": plain["perplexity_median"],
                    "plain_seconds_per_sample": round(plain["seconds_per_sample"], 3), "results": {}}
    for sampler in SAMPLERS:
        for steps in args.steps:
            pipeline.config.diffusion = defaults.updated(sampler=sampler, steps=steps)
            row = {}
            for condition in ("sentiment=positive", "sentiment=negative"):
                scores = bench.judge(get_methods()["dglm"](pipeline), condition, f"{sampler} {steps} {condition}")
                share = scores["sentiment=positive"]
                row[condition] = {
                    "judged_positive": round(share, 3), "standard_error": round(standard_error(share, count), 3),
                    "perplexity_median": round(scores["perplexity_median"], 2),
                    "perplexity_vs_plain": round(scores["perplexity_median"] / plain["perplexity_median"], 2),
                    "dist3": round(scores["dist3"], 3),
                    "seconds_per_sample": round(scores["seconds_per_sample"], 3),
                }
            report["results"][f"{sampler} {steps}"] = row
            print(f"{sampler} {steps}", json.dumps(row), flush=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
