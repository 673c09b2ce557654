"""Can a sampling setting close the gap on negative sentiment, and what does it cost in fluency?
Runs the sentiment conditions under a few changes to the checkpoint's sampling settings (a larger
guidance scale, no re-noising of the latent before the prompt generator, a lower decoder temperature,
classifier-free guidance on the prefix),
judged as `dglm eval` judges them. Plain sampling is run once for each distinct decoder setting, so that
perplexities are compared at the same temperature.

    python benchmarks/sampling_settings.py --samples 10
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from dglm import Pipeline
from dglm.baselines import METHODS
from dglm.eval_harness import EvalConfig, Scorer, continue_all, parse_condition, read_prefixes

# name -> changes to the checkpoint's sampling settings
SETTINGS = {
    "default": {},
    "guidance scale 1024": {"guidance_scale": 1024.0},
    "no re-noising": {"renoise_alpha2": 1.0},
    "temperature 0.7": {"temperature": 0.7},
    "no re-noising, temperature 0.7": {"renoise_alpha2": 1.0, "temperature": 0.7},
    "prefix guidance 2": {"prefix_guidance": 2.0},
    "prefix guidance 4": {"prefix_guidance": 4.0},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prefixes", type=Path, default=Path("benchmarks/prefixes.txt"))
    parser.add_argument("--samples", type=int, default=10, help="samples per prefix and condition")
    parser.add_argument("--judge", default="data/sentiment-judge.csv", help="the sentiment judge's training data")
    parser.add_argument("--model")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sampling-settings.json"))
    args = parser.parse_args()

    config = EvalConfig(prefixes=str(args.prefixes), num_samples=args.samples, judges={"sentiment": args.judge})
    scorer = Scorer(config)
    pipeline = Pipeline.from_pretrained(args.model)
    defaults = pipeline.config.sampling
    rows = [(p, j) for p in read_prefixes(args.prefixes) for j in range(args.samples)]
    report: dict = {"samples_per_condition": len(rows), "judge_held_out_accuracy": scorer.judges["sentiment"].held_out_accuracy,
                    "results": {}}
    plain_settings_run = []  # plain sampling depends only on the decoder's settings: run it once for each
    for name, changes in SETTINGS.items():
        pipeline.config.sampling = dataclasses.replace(defaults, **changes)
        runs = [("dglm", "sentiment=negative"), ("dglm", "sentiment=positive")]
        plain_settings = METHODS["plain"](pipeline).decode_settings(config.max_new_tokens)
        if plain_settings not in plain_settings_run:
            plain_settings_run.append(plain_settings)
            runs.append(("plain", "none"))
        for method_name, condition in runs:
            constraints = parse_condition(condition)
            key = f"{name} | {method_name} | {condition}"
            continuations = continue_all(METHODS[method_name](pipeline), rows, constraints, config.max_new_tokens,
                                         config.batch_size, key)
            scores = scorer([p for p, _ in rows], continuations, constraints)
            report["results"][key] = {k: v for k, v in scores.items() if k in ("sentiment=positive", "perplexity_median", "dist3")}
            print(key, json.dumps(report["results"][key]), flush=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
