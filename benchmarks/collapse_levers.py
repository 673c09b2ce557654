"""Levers against collapse: control against homogeneity and perplexity, over each lever's strength.

Runs sentiment=positive and sentiment=negative on the development prefixes for each lever setting below (DGLM's
guidance modes at several strengths, and activation steering over its multiplier for comparison), plus plain
sampling and unguided DGLM once, judged as `dglm eval` judges them (TF-IDF and mpnet sentiment judges, Gemma
perplexity, collapse on mpnet). Writes a JSON report, every sample (gzipped JSONL) and a PNG of the frontiers.

    python benchmarks/collapse_levers.py --samples 10
    python benchmarks/collapse_levers.py --samples 10 --only "gradient 256" "project 0.99"
    python benchmarks/collapse_levers.py --samples 10 --only "choose 4 of gradient 16"   # K candidates, one kept
    python benchmarks/collapse_levers.py --samples 10 --only "noise-conditioned 64"   # the FiLM classifiers guide

The report is rewritten after every lever, and a run adds to the report already at --out (its levers are not run
again), so a long sweep can be stopped and continued.
"""

from __future__ import annotations

import argparse
import gzip
import json

from dglm.evaluation.bench import SentimentBench, add_common_arguments
from dglm.evaluation.collapse import relative_to_plain
from dglm.plugins import get_methods

# name -> (method, options): the lever and its strength; candidates are pinned, as the checkpoint's default is 4
LEVERS = {
    "gradient 16": ("dglm", {"guidance_scale": 16.0, "candidates": 1}),
    "gradient 64": ("dglm", {"guidance_scale": 64.0, "candidates": 1}),
    "gradient 256": ("dglm", {"guidance_scale": 256.0, "candidates": 1}),
    "margin 0.9": ("dglm", {"guidance_mode": "margin", "guidance_target": 0.9, "guidance_scale": 256.0, "candidates": 1}),
    "margin 0.99": ("dglm", {"guidance_mode": "margin", "guidance_target": 0.99, "guidance_scale": 256.0, "candidates": 1}),
    "margin 0.999": ("dglm", {"guidance_mode": "margin", "guidance_target": 0.999, "guidance_scale": 256.0, "candidates": 1}),
    "project 0.9": ("dglm", {"guidance_mode": "project", "guidance_target": 0.9, "candidates": 1}),
    "project 0.99": ("dglm", {"guidance_mode": "project", "guidance_target": 0.99, "candidates": 1}),
    "project 0.999": ("dglm", {"guidance_mode": "project", "guidance_target": 0.999, "candidates": 1}),
    "project 0.9999": ("dglm", {"guidance_mode": "project", "guidance_target": 0.9999, "candidates": 1}),
    "anchor 0.25": ("dglm", {"guidance_scale": 256.0, "guidance_anchor": 0.25, "candidates": 1}),
    "anchor 0.5": ("dglm", {"guidance_scale": 256.0, "guidance_anchor": 0.5, "candidates": 1}),
    "anchor 1": ("dglm", {"guidance_scale": 256.0, "guidance_anchor": 1.0, "candidates": 1}),
    "anchor 2": ("dglm", {"guidance_scale": 256.0, "guidance_anchor": 2.0, "candidates": 1}),
    "anchor 8": ("dglm", {"guidance_scale": 256.0, "guidance_anchor": 8.0, "candidates": 1}),
    "choose 4 of gradient 16": ("dglm", {"guidance_scale": 16.0, "candidates": 4}),
    "choose 4 of gradient 32": ("dglm", {"guidance_scale": 32.0, "candidates": 4}),
    "choose 4 of gradient 64": ("dglm", {"guidance_scale": 64.0, "candidates": 4}),
    "choose 8 of gradient 16": ("dglm", {"guidance_scale": 16.0, "candidates": 8}),
    "choose 8 of gradient 32": ("dglm", {"guidance_scale": 32.0, "candidates": 8}),
    "choose 4 @0.99 of gradient 16": ("dglm", {"guidance_scale": 16.0, "candidates": 4, "guidance_target": 0.99}),
    "choose 4 @0.99 of gradient 32": ("dglm", {"guidance_scale": 32.0, "candidates": 4, "guidance_target": 0.99}),
    "choose 4 @0.99 of gradient 64": ("dglm", {"guidance_scale": 64.0, "candidates": 4, "guidance_target": 0.99}),
    "choose 4 @0.9999 of gradient 32": ("dglm", {"guidance_scale": 32.0, "candidates": 4, "guidance_target": 0.9999}),
    "from t=0.6 gradient 64": ("dglm", {"guidance_scale": 64.0, "guidance_start": 0.6, "candidates": 1}),
    "from t=0.6 gradient 256": ("dglm", {"guidance_scale": 256.0, "guidance_start": 0.6, "candidates": 1}),
    "from t=0.3 gradient 256": ("dglm", {"guidance_scale": 256.0, "guidance_start": 0.3, "candidates": 1}),
    "noise-conditioned 16": ("dglm", {"guidance_classifier": "noise-conditioned", "guidance_scale": 16.0,
                                  "candidates": 1}),
    "noise-conditioned 64": ("dglm", {"guidance_classifier": "noise-conditioned", "guidance_scale": 64.0,
                                  "candidates": 1}),
    "noise-conditioned 256": ("dglm", {"guidance_classifier": "noise-conditioned", "guidance_scale": 256.0,
                                  "candidates": 1}),
    "choose 4 of noise-conditioned 16": ("dglm", {"guidance_classifier": "noise-conditioned", "guidance_scale": 16.0,
                                              "candidates": 4}),
    "choose 4 of noise-conditioned 64": ("dglm", {"guidance_classifier": "noise-conditioned", "guidance_scale": 64.0,
                                              "candidates": 4}),
    "particles 4 of gradient 16": ("dglm", {"guidance_scale": 16.0, "particles": 4, "candidates": 1}),
    "particles 8 of gradient 16": ("dglm", {"guidance_scale": 16.0, "particles": 8, "candidates": 1}),
    "particles 8 of gradient 64": ("dglm", {"guidance_scale": 64.0, "particles": 8, "candidates": 1}),
    "choose 4 of particles 4 of gradient 16": ("dglm", {"guidance_scale": 16.0, "particles": 4, "candidates": 4}),
    "activation x2": ("activation", {"layer": 15, "multiplier": 2.0}),
    "activation x4": ("activation", {"layer": 15, "multiplier": 4.0}),
    "activation x8": ("activation", {"layer": 15, "multiplier": 8.0}),
}
KEPT = ("sentiment=positive", "sentiment@all-mpnet-base-v2=positive", "perplexity_median", "homogeneity",
        "prefix_relevance", "top_word", "top_word_share", "dist3", "dist3_all", "seconds_per_sample",
        "prefix_word_share")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, prefixes="benchmarks/prefixes-dev.txt", out="benchmarks/results/collapse-levers.json")
    parser.add_argument("--only", nargs="+", choices=list(LEVERS), metavar="LEVER", help=f"levers, of: {', '.join(LEVERS)}")
    args = parser.parse_args()

    bench = SentimentBench.from_args(args)
    methods = get_methods()
    samples_path = args.out.with_suffix(".samples.jsonl.gz")
    earlier = json.loads(args.out.read_text())["results"] if args.out.exists() else {}
    samples = [json.loads(line) for line in gzip.open(samples_path, "rt")] if earlier and samples_path.exists() else []

    def judge(name: str, method_name: str, options: dict, condition: str) -> dict:
        method = methods[method_name](bench.pipeline, **options)
        scores, continuations = bench.judge_with_texts(method, condition, f"{name} {condition}")
        samples.extend({"lever": name, "condition": condition, "prefix": prefix, "seed": seed, "continuation": text}
                       for (prefix, seed), text in zip(bench.rows, continuations))
        kept = {key: scores[key] for key in KEPT + ("cross_prefix_cosine", "prefix_cosine") if key in scores}
        print(name, condition, json.dumps(kept), flush=True)
        return kept

    results = dict(earlier)
    runs = [("plain", "plain", {}, "none"), ("unguided", "dglm", {}, "none")]
    runs += [(name, *LEVERS[name], condition) for name in args.only or LEVERS
             for condition in ("sentiment=positive", "sentiment=negative")]
    for name, method_name, options, condition in runs:
        if f"{name} | {condition}" in results:
            continue
        results[f"{name} | {condition}"] = judge(name, method_name, options, condition)
        relative_to_plain(list(results.values()), results["plain | none"])
        report = {"prefixes": str(args.prefixes), "samples_per_condition": len(bench.rows), "levers": LEVERS,
                  "results": results}
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        with gzip.open(samples_path, "wt", encoding="utf-8") as file:
            file.writelines(json.dumps(s) + "\n" for s in samples)
    plot_frontiers(results, args.out.with_suffix(".png"))
    print(f"wrote {args.out}, its samples and {args.out.with_suffix('.png')}")


def plot_frontiers(results: dict, path) -> None:
    """Control (mean share on target, both sentiments, mpnet judge) against homogeneity, perplexity and cost (levers
    run without timings, in an earlier report, are left off the cost panel)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families: dict[str, list[tuple[float, dict]]] = {}
    for name in dict.fromkeys(key.split(" | ")[0] for key in results if " | sentiment=" in key):
        family, _, strength = name.rpartition(" ")
        positive, negative = results[f"{name} | sentiment=positive"], results[f"{name} | sentiment=negative"]
        control = (positive["sentiment@all-mpnet-base-v2=positive"] + 1 - negative["sentiment@all-mpnet-base-v2=positive"]) / 2
        plain_cost = results["plain | none"].get("seconds_per_sample")
        cost = [r.get("seconds_per_sample") for r in (positive, negative)]
        point = {"control": control, "homogeneity": (positive["homogeneity"] + negative["homogeneity"]) / 2,
                 "perplexity": (positive["perplexity_median"] + negative["perplexity_median"]) / 2,
                 "cost": sum(cost) / 2 / plain_cost if plain_cost and None not in cost else None}
        families.setdefault(family, []).append((float(strength.strip("x")), point))
    figure, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    for axis, x in zip(axes, ("homogeneity", "perplexity", "cost")):
        for number, (family, points) in enumerate(families.items()):
            shown = sorted((item for item in points if item[1][x] is not None), key=lambda item: item[0])
            if not shown:
                continue
            axis.plot([p[x] for _, p in shown], [p["control"] for _, p in shown], "os^D"[number // 10 % 4] + "-",
                      color=plt.get_cmap("tab10").colors[number % 10], label=family)
            for strength, p in shown:
                axis.annotate(f"{strength:g}", (p[x], p["control"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        default = next((p for strength, p in families.get("gradient", []) if strength == 256.0), None)
        if default is not None and default[x] is not None:  # the bundled checkpoint's setting until candidates
            axis.plot([default[x]], [default["control"]], "*", color="black", markersize=13, zorder=0,
                      label="gradient 256: the default before candidates")
        reference = {"homogeneity": 1.0, "perplexity": results["plain | none"]["perplexity_median"], "cost": 1.0}[x]
        axis.axvline(reference, color="grey", linestyle=":", label="plain sampling")
        axis.set(xlabel={"homogeneity": "cross-prefix homogeneity (x plain sampling's; mean of both sentiments)",
                         "perplexity": "median perplexity, Gemma 3 270M (mean of both sentiments)",
                         "cost": "seconds a sample, batch 25 (x plain sampling's, same run)"}[x],
                 ylabel="control: mean share on target (mpnet judge)", ylim=(0.5, 1.0))
    axes[0].legend(fontsize=8)
    figure.suptitle("Levers against collapse, development prefixes (up and left is better)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    main()
