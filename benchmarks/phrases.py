"""Attributes from a phrase: how far guidance towards a phrase moves the text towards it, and at what cost in
variety and fluency.

For ten phrases fixed before any measurement, on a file of prefixes: the mean cosine, on an encoder other
than the guidance's (all-mpnet-base-v2), between the phrase and each continuation, guided minus unguided (same
prefixes, same seeds); cross-prefix homogeneity relative to plain sampling's; median perplexity (Gemma 3 270M);
and three phrases composed with sentiment beside that sentiment alone, judged by the TF-IDF sentiment judge.
`phrase_cosine` was chosen on the development prefixes; the benchmark prefixes give the figures reported:

    python benchmarks/phrases.py --samples 4 --weights 1 0.75 1.25 --out benchmarks/results/phrases-dev.json
    python benchmarks/phrases.py --prefixes benchmarks/prefixes.txt --samples 4 --weights 1
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from dglm.constraints import Constraint
from dglm.data.prefixes import read_prefixes
from dglm.evaluation.collapse import cross_prefix_cosine
from dglm.evaluation.harness import continue_all
from dglm.evaluation.judges import PerplexityJudge, TextJudge
from dglm.pipeline import Pipeline
from dglm.plugins import get_methods
from dglm.seeding import seeded_rows
from dglm.stages.encoder import SentenceEncoder

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
    parser.add_argument("--guidance-mode", help="the probes' guidance mode instead of the checkpoint's (phrases are "
                                                "bounds in every mode), e.g. project, to compose without collapse")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/phrases.json"))
    args = parser.parse_args()

    pipeline = Pipeline.from_pretrained(args.model)
    rows = seeded_rows(read_prefixes(args.prefixes), args.samples, 0)
    prefixes = [prefix for prefix, _ in rows]
    dglm = get_methods()["dglm"](pipeline, guidance_mode=args.guidance_mode)
    plain = get_methods()["plain"](pipeline)
    judge, perplexity = SentenceEncoder(args.judge_encoder), PerplexityJudge()
    targets = dict(zip(PHRASES, judge.encode(PHRASES)))

    def continued(method, constraints: list[Constraint], desc: str) -> tuple[list[str], torch.Tensor]:
        texts = continue_all(method, rows, constraints, 20, 25, desc)
        return texts, judge.encode(texts)

    plain_texts, plain_embeddings = continued(plain, [], "plain")
    unguided_texts, unguided_embeddings = continued(dglm, [], "unguided")
    plain_cross = cross_prefix_cosine(plain_embeddings, prefixes)

    def measured(constraints: list[Constraint], desc: str, phrase: str | None) -> dict:
        """Gain towards `phrase` over unguided DGLM (same prefixes and seeds), homogeneity, perplexity, examples."""
        texts, embeddings = continued(dglm, constraints, desc)
        result = {"homogeneity": cross_prefix_cosine(embeddings, prefixes) / plain_cross,
                  "perplexity": statistics.median(perplexity(prefixes, texts)),
                  "examples": [prefixes[i] + texts[i] for i in range(0, len(rows), args.samples)][:3]}
        if phrase:
            target = targets[phrase]
            result["gain"] = float((embeddings @ target).mean() - (unguided_embeddings @ target).mean())
        return result | {"texts": texts}

    report = {"prefixes": str(args.prefixes), "samples_per_prefix": args.samples, "judge_encoder": args.judge_encoder,
              "guidance_mode": args.guidance_mode or pipeline.config.diffusion.guidance_mode,
              "plain": {"perplexity": statistics.median(perplexity(prefixes, plain_texts))},
              "unguided": {"homogeneity": cross_prefix_cosine(unguided_embeddings, prefixes) / plain_cross,
                           "perplexity": statistics.median(perplexity(prefixes, unguided_texts))},
              "weights": {}}
    for weight in args.weights:
        per_phrase = {phrase: without_texts(measured([Constraint.toward(phrase, weight)], f"{phrase} x{weight:g}", phrase))
                      for phrase in PHRASES}
        report["weights"][str(weight)] = {
            "mean_gain": statistics.mean(r["gain"] for r in per_phrase.values()),
            "mean_homogeneity": statistics.mean(r["homogeneity"] for r in per_phrase.values()),
            "median_perplexity": statistics.median(r["perplexity"] for r in per_phrase.values()),
            "phrases": per_phrase}
        write(args.out, report)
    report["composed"] = composed(measured)
    write(args.out, report)
    print(table(report))


def composed(measured) -> list[dict]:
    """Each composed pair at weight 1 each, beside its sentiment alone: the phrase gain, homogeneity, and the share
    the TF-IDF sentiment judge (trained on other data than the probe) reads as asked."""
    sentiment = TextJudge.train("sentiment", "data/sentiment-judge.csv")
    results = []
    for phrase, label in COMPOSED:
        alone = measured([Constraint("sentiment", label)], f"{label} alone", phrase)
        both = measured([Constraint.toward(phrase), Constraint("sentiment", label)], f"{phrase} + {label}", phrase)
        results.append({"phrase": phrase, "sentiment": label} | {
            f"{name}_{key}": value for name, run in (("composed", both), ("sentiment_alone", alone))
            for key, value in without_texts(run).items()} | {
            f"{name}_judged_as_asked": statistics.mean(read == label for read in sentiment.predict(run["texts"]))
            for name, run in (("composed", both), ("sentiment_alone", alone))})
    return results


def without_texts(result: dict) -> dict:
    return {key: value for key, value in result.items() if key != "texts"}


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
        lines.append(f"\n{c['phrase']} + {c['sentiment']}: gain {c['composed_gain']:+.3f}, homogeneity "
                     f"{c['composed_homogeneity']:.2f}, judged {c['sentiment']} {c['composed_judged_as_asked']:.2f} "
                     f"(sentiment alone: gain {c['sentiment_alone_gain']:+.3f}, homogeneity "
                     f"{c['sentiment_alone_homogeneity']:.2f}, judged {c['sentiment_alone_judged_as_asked']:.2f}); "
                     f"e.g. {c['composed_examples'][0]!r}")
    lines.append(f"\nplain sampling perplexity {report['plain']['perplexity']:.1f}; unguided DGLM homogeneity "
                 f"{report['unguided']['homogeneity']:.2f}, perplexity {report['unguided']['perplexity']:.1f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
