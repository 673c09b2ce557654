"""Compare attribute judges: on one held-out split, on real labelled continuations, and on saved samples.

The sentiment targets are read off a judge, so the judge's own errors bound what the figures can show.
This script trains the TF-IDF judge that `dglm eval` uses and a judge on another sentence encoder than
the pipeline's (all-mpnet-base-v2, not the guidance's all-MiniLM-L6-v2) on the same judge data and the
same split, then reports for each:
- held-out accuracy;
- its verdicts on real continuations of sentences labelled by other data (`data/sentiment.csv`, the
  probe's data, which neither judge saw), cut after their first words and kept to 16 words, about the
  length of a 20-token sample: how well the judge reads text like the samples when the truth is known;
- its verdicts on the samples that `dglm eval` saved, so both judges read exactly the same text.

    python benchmarks/judges.py --samples benchmarks/results/sentiment.samples.jsonl
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from dglm.data.labelled import pick_sentences, read_labelled
from dglm.evaluation.judges import TextJudge
from dglm.evaluation.metrics import label_shares


def labelled_continuations(path: str, per_label: int, prefix_words: int, seed: int) -> dict[str, list[str]]:
    """Up to `per_label` continuations of each label: words prefix_words+1 .. prefix_words+16."""
    texts, labels = read_labelled(path, "text", "label")
    picked = pick_sentences(texts, labels, per_label, prefix_words + 6, seed)
    return {label: [" ".join(words[prefix_words : prefix_words + 16]) for words in sentences] for label, sentences in picked.items()}


def read_samples(path: str) -> dict[str, list[str]]:
    """Continuations of a `dglm eval` samples file, grouped by method, condition and guidance scale."""
    groups: dict[str, list[str]] = defaultdict(list)
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        sample = json.loads(line)
        scale = "" if sample["guidance_scale"] is None else f" | scale {sample['guidance_scale']:g}"
        groups[f"{sample['method']} | {sample['condition']}{scale}"].append(sample["continuation"])
    return groups


def compare(judges: dict[str, TextJudge], groups: dict[str, list[str]]) -> dict[str, dict]:
    """Each judge's label rates on each group of texts, and how often the judges agree."""
    results = {}
    for name, texts in groups.items():
        verdicts = {judge_name: judge.predict(texts) for judge_name, judge in judges.items()}
        first, *others = verdicts.values()
        results[name] = {judge_name: {label: round(share, 3) for label, share in label_shares(v, judges[judge_name].model.classes_).items()}
                         for judge_name, v in verdicts.items()}
        results[name]["all judges agree"] = round(sum(all(o[i] == first[i] for o in others) for i in range(len(first))) / len(first), 3)
        results[name]["texts"] = len(texts)
    return results


def markdown(report: dict, label: str) -> str:
    names = list(report["held_out_accuracy"])
    lines = ["| judge | " + " | ".join(names) + " |", "|---|" + "---|" * len(names),
             "| held-out accuracy | " + " | ".join(f"{report['held_out_accuracy'][n]:.3f}" for n in names) + " |"]
    for section in ("real continuations", "samples"):
        for group, result in report[section].items():
            cells = " | ".join(f"{result[n][label]:.3f}" for n in names)
            lines.append(f"| {group} ({result['texts']}): judged {label} | {cells} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--judge-data", default="data/sentiment-judge.csv", help="labelled CSV both judges are trained on")
    parser.add_argument("--labelled", default="data/sentiment.csv", help="other labelled sentences, for real continuations")
    parser.add_argument("--encoder", default="all-mpnet-base-v2", help="sentence encoder of the second judge")
    parser.add_argument("--samples", nargs="*", default=[], help="samples files written by dglm eval")
    parser.add_argument("--per-label", type=int, default=1000)
    parser.add_argument("--prefix-words", type=int, default=4)
    parser.add_argument("--label", default="positive", help="the label whose rate the Markdown table shows")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/judges")
    args = parser.parse_args()

    judges = {"tf-idf": TextJudge.train("tf-idf", args.judge_data, args.seed),
              args.encoder: TextJudge.train(args.encoder, args.judge_data, args.seed, encoder=args.encoder)}
    report = {"args": vars(args), "held_out_accuracy": {n: round(j.held_out_accuracy, 4) for n, j in judges.items()}}
    print("held-out accuracy:", report["held_out_accuracy"], flush=True)
    real = labelled_continuations(args.labelled, args.per_label, args.prefix_words, args.seed)
    report["real continuations"] = compare(judges, {f"labelled {label}": texts for label, texts in real.items()})
    report["samples"] = {}
    for path in args.samples:
        report["samples"].update({f"{Path(path).name.split('.')[0]}: {group}": result
                                  for group, result in compare(judges, read_samples(path)).items()})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(report, args.label))
    print(markdown(report, args.label))


if __name__ == "__main__":
    main()
