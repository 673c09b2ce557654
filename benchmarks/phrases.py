"""Attributes from a phrase: how far guidance towards a phrase moves the text towards it, and at what cost in
variety and fluency.

For ten phrases fixed before any measurement, on the development prefixes: the mean cosine, on an encoder other
than the guidance's (all-mpnet-base-v2), between the phrase and each continuation, guided minus unguided (same
prefixes, same seeds); cross-prefix homogeneity relative to plain sampling's; median perplexity (Gemma 3 270M);
and three phrases composed with sentiment, judged by the TF-IDF sentiment judge.

    python benchmarks/phrases.py --samples 4 --weights 0.25 1 4
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from dglm.data.prefixes import read_prefixes
from dglm.evaluation.collapse import cross_prefix_cosine
from dglm.evaluation.harness import continue_all
from dglm.evaluation.judges import PerplexityJudge, TextJudge
from dglm.pipeline import Pipeline
from dglm.plugins import get_methods
from dglm.seeding import seeded_rows
from dglm.stages.encoder import SentenceEncoder
from dglm.stages.guidance import Constraint

PHRASES = ["space exploration", "cooking at home", "a storm at sea", "a job interview", "a wedding", "a football match",
           "a hospital", "a court case", "a garden in spring", "a computer bug"]
COMPOSED = [("a storm at sea", "negative"), ("a wedding", "positive"), ("a job interview", "negative")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prefixes", type=Path, default=Path("benchmarks/prefixes-dev.txt"))
    parser.add_argument("--samples", type=int, default=4, help="samples per prefix and phrase")
    parser.add_argument("--weights", type=float, nargs="+", default=[1.0], help="phrase weights to measure")
    parser.add_argument("--judge-encoder", default="all-mpnet-base-v2")
    parser.add_argument("--model")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/phrases.json"))
    args = parser.parse_args()

    pipeline = Pipeline.from_pretrained(args.model)
    rows = seeded_rows(read_prefixes(args.prefixes), args.samples, 0)
    prefixes = [prefix for prefix, _ in rows]
    dglm, plain = get_methods()["dglm"](pipeline), get_methods()["plain"](pipeline)
    judge, perplexity = SentenceEncoder(args.judge_encoder), PerplexityJudge()
    targets = dict(zip(PHRASES, judge.encode(PHRASES)))

    def continued(method, constraints: list[Constraint], desc: str) -> tuple[list[str], torch.Tensor]:
        texts = continue_all(method, rows, constraints, 20, 25, desc)
        return texts, judge.encode(texts)

    plain_texts, plain_embeddings = continued(plain, [], "plain")
    unguided_texts, unguided_embeddings = continued(dglm, [], "unguided")
    plain_cross = cross_prefix_cosine(plain_embeddings, prefixes)
    report = {"prefixes": str(args.prefixes), "samples_per_prefix": args.samples, "judge_encoder": args.judge_encoder,
              "plain": {"perplexity": statistics.median(perplexity(prefixes, plain_texts))},
              "unguided": {"homogeneity": cross_prefix_cosine(unguided_embeddings, prefixes) / plain_cross,
                           "perplexity": statistics.median(perplexity(prefixes, unguided_texts))},
              "weights": {}}
    for weight in args.weights:
        per_phrase = {}
        for phrase, target in targets.items():
            texts, embeddings = continued(dglm, [Constraint.toward(phrase, weight)], f"{phrase} x{weight:g}")
            per_phrase[phrase] = {
                "gain": float((embeddings @ target).mean() - (unguided_embeddings @ target).mean()),
                "homogeneity": cross_prefix_cosine(embeddings, prefixes) / plain_cross,
                "perplexity": statistics.median(perplexity(prefixes, texts)),
                "examples": [prefixes[i] + texts[i] for i in range(0, len(rows), args.samples)][:3],
            }
        report["weights"][str(weight)] = {
            "mean_gain": statistics.mean(r["gain"] for r in per_phrase.values()),
            "mean_homogeneity": statistics.mean(r["homogeneity"] for r in per_phrase.values()),
            "median_perplexity": statistics.median(r["perplexity"] for r in per_phrase.values()),
            "phrases": per_phrase}
        write(args.out, report)
    report["composed"] = composed_examples(dglm, rows, targets, judge, unguided_embeddings)
    write(args.out, report)
    print(table(report))


def composed_examples(dglm, rows, targets, judge, unguided_embeddings) -> list[dict]:
    """Each phrase at weight 1 composed with a sentiment: its phrase gain, the share the TF-IDF sentiment judge
    (trained on other data than the probe) reads as asked, and three samples to read."""
    sentiment = TextJudge.train("sentiment", "data/sentiment-judge.csv")
    results = []
    for phrase, label in COMPOSED:
        texts = continue_all(dglm, rows, [Constraint.toward(phrase), Constraint("sentiment", label)], 20, 25,
                             f"{phrase} + {label}")
        gain = (judge.encode(texts) @ targets[phrase]).mean() - (unguided_embeddings @ targets[phrase]).mean()
        results.append({"phrase": phrase, "sentiment": label, "gain": float(gain),
                        "judged_as_asked": statistics.mean(read == label for read in sentiment.predict(texts)),
                        "examples": [rows[i][0] + texts[i] for i in (0, len(rows) // 2, len(rows) - 1)]})
    return results


def write(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


def table(report: dict) -> str:
    lines = ["| weight | phrase | cosine gain | homogeneity | perplexity |", "|---|---|---|---|---|"]
    for weight, result in report["weights"].items():
        for phrase, r in result["phrases"].items():
            lines.append(f"| {weight} | {phrase} | {r['gain']:+.3f} | {r['homogeneity']:.2f} | {r['perplexity']:.1f} |")
        lines.append(f"| {weight} | **mean** | **{result['mean_gain']:+.3f}** | **{result['mean_homogeneity']:.2f}** | "
                     f"{result['median_perplexity']:.1f} |")
    for c in report.get("composed", []):
        lines.append(f"\n{c['phrase']} + {c['sentiment']}: gain {c['gain']:+.3f}, judged {c['sentiment']} "
                     f"{c['judged_as_asked']:.2f}; e.g. {c['examples'][0]!r}")
    lines.append(f"\nplain sampling perplexity {report['plain']['perplexity']:.1f}; unguided DGLM homogeneity "
                 f"{report['unguided']['homogeneity']:.2f}, perplexity {report['unguided']['perplexity']:.1f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
