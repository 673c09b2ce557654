"""Choose the guidance scale on development prefixes that the reported figures never use.

Runs sentiment=positive and sentiment=negative at each scale on `benchmarks/prefixes-dev.txt`, judged as
`dglm eval` judges them, and applies one rule fixed before looking at the numbers: the scale with the
highest mean control, mean(share positive when positive is asked, share negative when negative is asked),
among the scales whose median perplexity stays within 1.5x that of unguided DGLM; ties go to the smaller
scale. Writes a JSON report and a plot of both control rates and perplexity against the scale.

    python benchmarks/studies/choose_scale.py --samples 10
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dglm.evaluation.bench import SentimentBench, add_common_arguments
from dglm.plugins import get_methods

MAX_PERPLEXITY_RATIO = 1.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, prefixes="benchmarks/prefixes-dev.txt", out="benchmarks/results/choose-scale.json")
    parser.add_argument("--scales", type=float, nargs="+", default=[32.0, 64.0, 128.0, 256.0, 512.0, 1024.0])
    args = parser.parse_args()

    bench = SentimentBench.from_args(args)
    pipeline = bench.pipeline

    def positive_rate_and_perplexity(scale: float, condition: str) -> tuple[float, float]:
        scores = bench.judge(get_methods()["dglm"](pipeline, guidance_scale=scale), condition, f"scale {scale:g} {condition}")
        return scores["sentiment=positive"], scores["perplexity_median"]

    unguided_positive, unguided_perplexity = positive_rate_and_perplexity(0.0, "none")
    results = {}
    for scale in args.scales:
        positive_asked, positive_perplexity = positive_rate_and_perplexity(scale, "sentiment=positive")
        negative_asked, negative_perplexity = positive_rate_and_perplexity(scale, "sentiment=negative")
        results[scale] = {
            "positive_when_positive_asked": positive_asked, "positive_when_negative_asked": negative_asked,
            "control": (positive_asked + 1.0 - negative_asked) / 2,
            "perplexity_ratio": max(positive_perplexity, negative_perplexity) / unguided_perplexity,
        }
        print(f"scale {scale:g}: {json.dumps(results[scale])}", flush=True)
    allowed = [scale for scale, r in results.items() if r["perplexity_ratio"] <= MAX_PERPLEXITY_RATIO]
    chosen = max(allowed, key=lambda scale: (results[scale]["control"], -scale)) if allowed else None
    report = {"prefixes": str(args.prefixes), "samples_per_condition": len(bench.rows),
              "unguided": {"positive": unguided_positive, "perplexity_median": unguided_perplexity},
              "results": results, "chosen_scale": chosen, "checkpoint_scale": pipeline.config.diffusion.guidance_scale}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    plot(results, args.out.with_suffix(".png"), chosen)
    print(f"chosen scale: {chosen} (checkpoint default {pipeline.config.diffusion.guidance_scale:g}); wrote {args.out}")


def plot(results: dict, path: Path, chosen: float | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scales = list(results)
    figure, left = plt.subplots(figsize=(6, 4))
    left.plot(scales, [r["positive_when_positive_asked"] for r in results.values()], "o-", label="positive asked: judged positive")
    left.plot(scales, [1 - r["positive_when_negative_asked"] for r in results.values()], "o-", label="negative asked: judged negative")
    left.set(xscale="log", xlabel="guidance scale", ylabel="share on target (judge)", ylim=(0, 1))
    right = left.twinx()
    right.plot(scales, [r["perplexity_ratio"] for r in results.values()], "s--", color="tab:red")
    right.axhline(MAX_PERPLEXITY_RATIO, color="tab:red", linewidth=0.5)
    right.set_ylabel("worst perplexity / unguided", color="tab:red")
    right.set_ylim(0, 1.2 * max(MAX_PERPLEXITY_RATIO, *(r["perplexity_ratio"] for r in results.values())))
    if chosen is not None:
        left.axvline(chosen, color="grey", linestyle=":")
    left.legend(loc="lower right", fontsize=8)
    left.set_title("Guidance scale on development prefixes")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    main()
