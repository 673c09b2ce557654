"""Can a sampling setting close the gap on negative sentiment, and what does it cost in fluency?
Runs the sentiment conditions under a few changes to the checkpoint's sampling settings (a larger
guidance scale, no re-noising of the latent before the prompt generator, a lower decoder temperature,
classifier-free guidance on the prefix, min-p truncation, more diffusion steps), judged as `dglm eval`
judges them. Plain sampling is run once for each distinct decoder setting, so that perplexities are
compared at the same decoder settings.

    python benchmarks/studies/sampling_settings.py --samples 10
    python benchmarks/studies/sampling_settings.py --prefixes benchmarks/prefixes-dev.txt --only "min_p 0.3" "min_p 0.4"
"""

from __future__ import annotations

import argparse
import json

from dglm.evaluation.bench import SentimentBench, add_common_arguments
from dglm.plugins import get_methods

# name -> changes to the checkpoint's sampling settings
SETTINGS = {
    "default": {},
    "guidance scale 1024": {"guidance_scale": 1024.0},
    "no re-noising": {"renoise_alpha2": 1.0},
    "temperature 0.7": {"temperature": 0.7},
    "no re-noising, temperature 0.7": {"renoise_alpha2": 1.0, "temperature": 0.7},
    "prefix guidance 2": {"prefix_guidance": 2.0},
    "prefix guidance 4": {"prefix_guidance": 4.0},
    "prefix guidance 8": {"prefix_guidance": 8.0},
    "min_p 0 (off)": {"min_p": 0.0},
    "min_p 0.2": {"min_p": 0.2},
    "min_p 0.3": {"min_p": 0.3},
    "min_p 0.4": {"min_p": 0.4},
    "min_p 0.2, temperature 0.7": {"min_p": 0.2, "temperature": 0.7},
    "min_p 0.2, guidance scale 512": {"min_p": 0.2, "guidance_scale": 512.0},
    "50 diffusion steps": {"steps": 50},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, prefixes="benchmarks/prefixes.txt", out="benchmarks/results/sampling-settings.json")
    parser.add_argument("--only", nargs="+", choices=list(SETTINGS), metavar="SETTING",
                        help=f"run only these settings, of: {', '.join(SETTINGS)}")
    args = parser.parse_args()

    bench = SentimentBench.from_args(args)
    pipeline = bench.pipeline
    diffusion, decoding = pipeline.config.diffusion, pipeline.config.decoding
    report: dict = {"samples_per_condition": len(bench.rows),
                    "judge_held_out_accuracy": bench.scorer.judges["sentiment"].held_out_accuracy, "results": {}}
    plain_settings_run = []  # plain sampling depends only on the decoder's settings: run it once for each
    for name in args.only or SETTINGS:
        changes = SETTINGS[name]
        pipeline.config.diffusion, pipeline.config.decoding = pipeline.settings(**changes)
        runs = [("dglm", "sentiment=negative"), ("dglm", "sentiment=positive")]
        plain_settings = pipeline.config.decoding
        if plain_settings not in plain_settings_run:
            plain_settings_run.append(plain_settings)
            runs.append(("plain", "none"))
        for method_name, condition in runs:
            key = f"{name} | {method_name} | {condition}"
            scores = bench.judge(get_methods()[method_name](pipeline), condition, key)
            report["results"][key] = {k: v for k, v in scores.items()
                                      if k.startswith("sentiment") and k.endswith("=positive") or k in ("perplexity_median", "dist3")}
            print(key, json.dumps(report["results"][key]), flush=True)
    pipeline.config.diffusion, pipeline.config.decoding = diffusion, decoding
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
