"""Collapse measures of saved samples: homogeneity, prefix relevance, top-word share and Dist-3, per method and condition.

Reads `dglm eval` sample files (JSONL, gzipped or not) and measures them as `dglm eval` now does, on
all-mpnet-base-v2, relative to plain sampling in the same file (or in `--plain-from`, for a file without it:
plain sampling ignores the targets, so its continuations of the same prefixes are the reference). This is how
results saved before the collapse measures existed are put beside new ones.

    python benchmarks/collapse_table.py --samples benchmarks/results/sentiment.samples.jsonl \\
        benchmarks/results/baselines.samples.jsonl
    python benchmarks/collapse_table.py --samples benchmarks/results/composition.samples.jsonl \\
        --plain-from benchmarks/results/sentiment.samples.jsonl
"""

from __future__ import annotations

import argparse
import gzip
import json
from collections import defaultdict
from pathlib import Path

from dglm.evaluation.collapse import CollapseJudge, relative_to_plain
from dglm.evaluation.metrics import distinct_n


def read_samples(path: Path) -> dict[str, list[dict]]:
    """Samples grouped by "method | condition" (and "| scale S" for a trade-off run)."""
    opener = gzip.open if path.suffix == ".gz" else open
    groups: dict[str, list[dict]] = defaultdict(list)
    with opener(path, "rt", encoding="utf-8") as file:
        for line in file:
            sample = json.loads(line)
            scale = "" if sample.get("guidance_scale") is None else f" | scale {sample['guidance_scale']:g}"
            groups[f"{sample['method']} | {sample['condition']}{scale}"].append(sample)
    return groups


def samples_per_prefix(samples: list[dict]) -> int:
    """How many samples each prefix has: a group's samples come prefix by prefix."""
    return sum(s["prefix"] == samples[0]["prefix"] for s in samples)


def measure(judge: CollapseJudge, samples: list[dict], per_prefix: int) -> dict:
    prefixes, texts = [s["prefix"] for s in samples], [s["continuation"] for s in samples]
    groups = [texts[i : i + per_prefix] for i in range(0, len(texts), per_prefix)]
    return {**judge(prefixes, texts), "samples": len(texts),
            "dist3": sum(distinct_n(group, 3) for group in groups) / len(groups), "dist3_all": distinct_n(texts, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=Path, nargs="+", required=True)
    parser.add_argument("--plain-from", type=Path, help="take plain sampling's reference from this file instead")
    parser.add_argument("--encoder", default="all-mpnet-base-v2")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/collapse-table.json"))
    args = parser.parse_args()

    judge = CollapseJudge(args.encoder)
    report = {}
    for path in args.samples:
        groups = read_samples(path)
        reference = read_samples(args.plain_from) if args.plain_from else groups
        per_prefix = samples_per_prefix(next(iter(groups.values())))
        plain_samples = reference["plain | none"]
        plain = measure(judge, plain_samples, per_prefix)
        results = {key: measure(judge, samples, per_prefix) for key, samples in groups.items()}
        relative_to_plain([plain, *results.values()], plain)
        report[str(path)] = results
        print(f"\n{path} (plain sampling from {args.plain_from or path})\n")
        print("| method | condition | homogeneity | prefix relevance | top word (share) | dist3 | dist3 all |\n|---|---|---|---|---|---|---|")
        for key, r in results.items():
            method, _, condition = key.partition(" | ")
            print(f"| {method} | {condition} | {r['homogeneity']:.2f} | {r['prefix_relevance']:.2f} | {r['top_word']} "
                  f"({r['top_word_share']:.2f}) | {r['dist3']:.3f} | {r['dist3_all']:.3f} |")
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
