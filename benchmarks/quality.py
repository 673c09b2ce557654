"""Attribute success, fluency and diversity of generated text, judged independently of the guidance.

Every condition (a set of attribute targets, or none) is generated on the same prefixes and seeds.
Each sample is judged by TF-IDF classifiers trained on the *-judge.csv data (not the guidance probes'
data or features); perplexity comes from Gemma 3 270M, a different and larger LM than the decoder.

    python benchmarks/quality.py --condition none --condition sentiment=positive --condition sentiment=negative
    python benchmarks/quality.py -n 10 --condition sentiment=positive,topic=sport --no-perplexity
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from dglm import Pipeline
from dglm.evaluation import PerplexityJudge, TextJudge, distinct_n, median
from dglm.guidance import parse_constraint

JUDGE_DATA = {"sentiment": "data/sentiment-judge.csv", "topic": "data/topic-judge.csv"}


def parse_condition(text: str):
    return [] if text == "none" else [parse_constraint(part) for part in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--condition", action="append", required=True, help="'none' or NAME=LABEL[:W][,NAME=LABEL...]")
    parser.add_argument("--prefixes", type=Path, default=Path("benchmarks/prefixes.txt"))
    parser.add_argument("-n", "--num-samples", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--guidance-scale", type=float)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", help="checkpoint folder (default: bundled)")
    parser.add_argument("--no-perplexity", action="store_true", help="skip the Gemma perplexity judge")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/quality.json"))
    args = parser.parse_args()

    prefixes = [line.strip() for line in args.prefixes.read_text().splitlines() if line.strip()]
    pipeline = Pipeline.from_pretrained(args.model)
    judges = {name: TextJudge.train(name, path) for name, path in JUDGE_DATA.items()}
    print("judges:", {name: round(j.held_out_accuracy, 3) for name, j in judges.items()})
    perplexity = None if args.no_perplexity else PerplexityJudge()
    report = {"judges": {n: j.held_out_accuracy for n, j in judges.items()}, "settings": vars(args) | {"out": str(args.out), "prefixes": str(args.prefixes)}, "conditions": {}}
    for condition in args.condition:
        constraints = parse_condition(condition)
        start = time.perf_counter()
        samples = pipeline.generate(prefixes, attributes=constraints, num_samples=args.num_samples, seed=args.seed,
                                    max_new_tokens=args.max_new_tokens, guidance_scale=args.guidance_scale,
                                    steps=args.steps, progress=True)
        seconds = time.perf_counter() - start
        continuations = [s.continuation for s in samples]
        verdicts = {name: judge.predict(continuations) for name, judge in judges.items()}
        result = {"seconds_per_sample": seconds / len(samples), "samples": len(samples)}
        for name, labels in verdicts.items():
            for label in sorted(set(judges[name].model.classes_)):
                result[f"{name}={label}"] = sum(v == label for v in labels) / len(labels)
        if constraints:
            met = [all(verdicts[c.attribute][i] == c.label for c in constraints) for i in range(len(samples))]
            result["all_targets_met"] = sum(met) / len(met)
        by_prefix = [continuations[i : i + args.num_samples] for i in range(0, len(continuations), args.num_samples)]
        result["dist3"] = sum(distinct_n(group, 3) for group in by_prefix) / len(by_prefix)
        if perplexity is not None:
            scores = perplexity([s.prefix for s in samples], continuations)
            result["perplexity_median"] = median(scores)
            result["perplexity_mean"] = sum(scores) / len(scores)
        result["examples"] = [s.text for s in samples[: 3 * args.num_samples : args.num_samples]]
        report["conditions"][condition] = result
        print(condition, json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}, ensure_ascii=False))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
