"""The probe lever against collapse: does a sentiment probe that cannot tell domains apart steer to varied text?

The shipped sentiment probe is trained on human-rated snippets from four domains whose labels are skewed: tweets are
mostly positive, NYT editorials mostly negative. A probe can then score "editorial" as negative and "tweet" as
positive, and guidance along it writes news for negative. This script trains the same kind of probe on the same
snippets with each domain cut to equal positives and negatives (the "balanced" probe), and, on top of that, with the
directions that tell the pair corpus's five sources apart (news, BBC articles, speeches, the Brown corpus, reviews)
projected out of its embeddings (the "balanced, source-blind" probe). For each probe it reports:

1. its held-out accuracy and its cosine to the shipped probe;
2. which corpus sources its 200 most negative and most positive held-out continuations come from (the poles that
   strong guidance drives every prefix to);
3. text: gradient guidance at --scales on the development prefixes, judged as `dglm eval` judges (control, collapse,
   perplexity), with the shipped probe alongside on the same seeds.

    python benchmarks/studies/balanced_probe.py --samples 10 --scales 64 256

Needs `dglm data build` (data/pairs-*.jsonl, the judges' data and the downloaded sources in data/sources).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch

import dglm
from dglm.attributes.probes import Probe, train_probe
from dglm.data.corpus import SOURCES, fetch, normalised, read_review_snippets, read_rotten_tomatoes
from dglm.data.pairs import read_pairs
from dglm.evaluation.bench import SentimentBench, add_common_arguments
from dglm.plugins import get_methods, register_plugin

KEPT = ("sentiment=positive", "sentiment@all-mpnet-base-v2=positive", "perplexity_median", "homogeneity",
        "prefix_relevance", "top_word", "top_word_share", "dist3", "cross_prefix_cosine", "prefix_cosine")


def rated_snippets(cache: Path) -> list[tuple[str, str, str]]:
    """(domain, text, label) for the probe's snippets, deduplicated against Rotten Tomatoes as `dglm data build` does."""
    judge_texts = {normalised(text) for _, text, _ in read_rotten_tomatoes(fetch(SOURCES["rotten_tomatoes"], cache))}
    return [(document.split("-")[0], text, label)
            for document, text, label in read_review_snippets(fetch(SOURCES["review_snippets"], cache))
            if normalised(text) not in judge_texts]


def balanced(rows: list[tuple[str, str, str]], seed: int = 0) -> list[int]:
    """Indices of `rows` with each domain cut to as many positives as negatives (a seeded random subset)."""
    rng = np.random.default_rng(seed)
    kept: list[int] = []
    for domain in sorted({d for d, _, _ in rows}):
        by_label = [[i for i, (d, _, label) in enumerate(rows) if d == domain and label == wanted]
                    for wanted in ("negative", "positive")]
        size = min(len(indices) for indices in by_label)
        kept += [int(i) for indices in by_label for i in rng.choice(indices, size, replace=False)]
    return sorted(kept)


def source_directions(embeddings: torch.Tensor, sources: list[str]) -> np.ndarray:
    """An orthonormal basis of the directions a linear classifier uses to tell the corpus's sources apart."""
    from sklearn.linear_model import LogisticRegression

    weights = LogisticRegression(C=10.0, max_iter=3000).fit(embeddings.numpy(), sources).coef_
    weights = weights - weights.mean(axis=0)  # softmax rows are defined up to a shared shift: rank = sources - 1
    _, singular, basis = np.linalg.svd(weights, full_matrices=False)
    return basis[singular > 1e-6 * singular[0]]


def poles(probe: Probe, pool: torch.Tensor, pool_sources: list[str], count: int) -> dict:
    with torch.no_grad():
        positive = torch.softmax(probe(pool), dim=-1)[:, probe.labels.index("positive")]
    order = positive.argsort().tolist()
    share = lambda rows: {s: round(n / count, 2) for s, n in Counter(pool_sources[i] for i in rows).most_common()}
    return {"most negative": share(order[:count]), "most positive": share(order[-count:])}


def direction(probe: Probe) -> torch.Tensor:
    """The probe's positive-minus-negative weight: the way guidance towards positive moves a latent."""
    weight = probe.linear.weight
    return weight[probe.labels.index("positive")] - weight[probe.labels.index("negative")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, prefixes="benchmarks/prefixes-dev.txt", out="benchmarks/results/balanced-probe.json")
    parser.add_argument("--scales", type=float, nargs="+", default=[64.0, 256.0])
    parser.add_argument("--cache", type=Path, default=Path("data/sources"), help="the downloaded sources (dglm data build)")
    parser.add_argument("--source-pairs", type=int, default=8000, help="training pairs used to find the source directions")
    args = parser.parse_args()

    bench = SentimentBench.from_args(args)
    encoder = bench.pipeline.encoder
    shipped = bench.pipeline.make_guide([dglm.Constraint("sentiment", "positive")]).terms[0][0]

    rows = rated_snippets(args.cache)
    embeddings = encoder.encode([text for _, text, _ in rows], progress=True)
    keep = balanced(rows)
    print("snippets by domain and label:", dict(Counter((d, label) for d, _, label in rows)), f"balanced: {len(keep)}")
    train_pairs = read_pairs("data/pairs-train.jsonl")[: args.source_pairs]
    blind = np.eye(embeddings.shape[1]) - (basis := source_directions(
        encoder.encode([p["continuation"] for p in train_pairs], progress=True), [p["source"] for p in train_pairs])).T @ basis
    balanced_x = embeddings[keep]
    balanced_labels = [rows[i][2] for i in keep]
    probes = {
        "balanced": train_probe("sentiment_balanced", balanced_x, balanced_labels, encoder.name, "balanced snippets"),
        "source-blind": train_probe("sentiment_blind", balanced_x @ torch.tensor(blind, dtype=torch.float32),
                                    balanced_labels, encoder.name, "balanced snippets, source directions removed"),
    }
    with torch.no_grad():  # the blind probe's weights live in the projected space; fold the projection in
        probes["source-blind"].linear.weight.copy_(probes["source-blind"].linear.weight @ torch.tensor(blind, dtype=torch.float32))

    heldout = read_pairs("data/pairs-heldout.jsonl")
    pool = encoder.encode([p["continuation"] for p in heldout], progress=True)
    pool_sources = [p["source"] for p in heldout]
    report: dict = {"pool_sources": {s: round(n / len(heldout), 2) for s, n in Counter(pool_sources).most_common()},
                    "probes": {"shipped": {"held_out_accuracy": shipped.card["held_out_accuracy"],
                                           **poles(shipped, pool, pool_sources, 200)}}}
    for name, probe in probes.items():
        cosine = torch.nn.functional.cosine_similarity(direction(probe), direction(shipped), dim=0)
        report["probes"][name] = {"held_out_accuracy": probe.card["held_out_accuracy"],
                                  "cosine_to_shipped": round(float(cosine), 3), **poles(probe, pool, pool_sources, 200)}
    print(json.dumps(report, indent=1))

    with tempfile.TemporaryDirectory() as folder:
        cards = [probe.save(folder) for probe in probes.values()]

        class BalancedProbes:
            @dglm.hookimpl
            def register_attributes(self, register):
                for card in cards:
                    register(card)

        register_plugin(BalancedProbes(), "balanced-probes")
        method = get_methods()["dglm"]
        plain_scores, _ = bench.judge_with_texts(get_methods()["plain"](bench.pipeline), "none", "plain")
        results = {"plain | none": {key: plain_scores[key] for key in KEPT if key in plain_scores}}
        for scale in args.scales:
            for name, attribute in (("shipped", "sentiment"), ("balanced", "sentiment_balanced"), ("source-blind", "sentiment_blind")):
                for label in ("positive", "negative"):
                    scores, _ = bench.judge_with_texts(method(bench.pipeline, guidance_scale=scale),
                                                       f"{attribute}={label}", f"{name} {scale:g} {label}")
                    results[f"{name} {scale:g} | sentiment={label}"] = {key: scores[key] for key in KEPT if key in scores}
                    print(f"{name} {scale:g} {label}", json.dumps(results[f"{name} {scale:g} | sentiment={label}"]), flush=True)
    from dglm.evaluation.collapse import relative_to_plain

    relative_to_plain(list(results.values()), results["plain | none"])
    report["results"] = results
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
