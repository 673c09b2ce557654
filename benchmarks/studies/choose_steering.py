"""Choose activation steering's layer and multiplier on development prefixes that the reported figures never use.

Runs sentiment=positive and sentiment=negative with contrastive activation addition at each (layer,
multiplier) on `benchmarks/prefixes-dev.txt`, judged as `dglm eval` judges them, and applies one rule fixed
before looking at the numbers: the pair with the highest mean control, mean(share positive when positive is
asked, share negative when negative is asked), among the pairs whose median perplexity stays within 1.5x
that of plain sampling; ties go to the smaller multiplier, then the shallower layer. The chosen pair is what
`configs/eval/*.yaml` should give the `activation` method.

    python benchmarks/studies/choose_steering.py --samples 10
"""

from __future__ import annotations

import argparse
import json

from dglm.evaluation.bench import SentimentBench, add_common_arguments
from dglm.plugins import get_methods

MAX_PERPLEXITY_RATIO = 1.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, prefixes="benchmarks/prefixes-dev.txt", out="benchmarks/results/choose-steering.json")
    parser.add_argument("--layers", type=int, nargs="+", default=[6, 9, 12, 15, 18])
    parser.add_argument("--multipliers", type=float, nargs="+", default=[2.0, 4.0, 6.0, 8.0])
    parser.add_argument("--texts", default="data/sentiment.csv", help="labelled texts the vectors are taken from")
    args = parser.parse_args()

    bench = SentimentBench.from_args(args)
    methods = get_methods()
    plain = bench.judge(methods["plain"](bench.pipeline), "none", "plain")
    results = {}
    for layer in args.layers:
        # One method per layer, so that its vectors are computed once for all multipliers.
        steering = methods["activation"](bench.pipeline, layer=layer, texts={"sentiment": args.texts})
        for multiplier in args.multipliers:
            steering.options.multiplier = multiplier
            scores = {condition: bench.judge(steering, condition, f"layer {layer} x{multiplier:g} {condition}")
                      for condition in ("sentiment=positive", "sentiment=negative")}
            positive_asked = scores["sentiment=positive"]["sentiment=positive"]
            negative_asked = scores["sentiment=negative"]["sentiment=positive"]
            perplexity = max(s["perplexity_median"] for s in scores.values())
            results[f"{layer} {multiplier:g}"] = {
                "layer": layer, "multiplier": multiplier, "positive_when_positive_asked": positive_asked,
                "positive_when_negative_asked": negative_asked, "control": (positive_asked + 1.0 - negative_asked) / 2,
                "perplexity_ratio": perplexity / plain["perplexity_median"],
            }
            print(json.dumps(results[f"{layer} {multiplier:g}"]), flush=True)
    allowed = [r for r in results.values() if r["perplexity_ratio"] <= MAX_PERPLEXITY_RATIO]
    chosen = max(allowed, key=lambda r: (r["control"], -r["multiplier"], -r["layer"])) if allowed else None
    report = {"prefixes": str(args.prefixes), "samples_per_condition": len(bench.rows),
              "plain": {"positive": plain["sentiment=positive"], "perplexity_median": plain["perplexity_median"]},
              "results": results, "chosen": chosen}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"chosen: {chosen}; wrote {args.out}")


if __name__ == "__main__":
    main()
