"""Is it the candidates or the chooser that limits control? Draw K candidates a sample, then choose by several rules.

For sentiment=positive and sentiment=negative at each guidance scale, on the development prefixes, every sample's K
candidates are written once and kept. Each rule then picks one per sample from the first 4 or all K, and the picks
are judged as `dglm eval` judges them (TF-IDF and mpnet judges, collapse on mpnet, against plain sampling on the same
rows). The rules:
- first: candidate 0, what one candidate writes;
- the default: `Pipeline.choose_candidate` (the guidance probe at `guidance_target`, then the closest to the prefix);
- probe only: the candidate the guidance probe reads most on target (best of K by the probe);
- judges' oracle: of the candidates both judges read as asked, the closest to the prefix (else the default's pick).
  The oracle reads the judges, which generation must never do: it bounds what a perfect chooser could reach.
It also reports, within each condition, how well the probe's reading ranks the candidates as each judge labels them
(ROC AUC), and, for scale, how well each judge's probability ranks them as the other judge labels them.

    python benchmarks/studies/choosers.py --samples 10 --candidates 8 --scales 16 64
"""

from __future__ import annotations

import argparse
import json

import torch

from dglm.evaluation.bench import SentimentBench, add_common_arguments
from dglm.evaluation.collapse import cross_prefix_cosine, top_word_share
from dglm.evaluation.harness import parse_condition
from dglm.plugins import get_methods


def write_candidates(bench: SentimentBench, condition: str, scale: float, candidates: int,
                     chunk: int = 5) -> list[tuple[object, list[str]]]:
    """Each row of the bench with its `candidates` decoded candidates, in the order the pipeline draws them."""
    pipeline = bench.pipeline
    prefixes, seeds = [p for p, _ in bench.rows], [s for _, s in bench.rows]
    rows = list(pipeline.plan(prefixes, parse_condition(condition), 1, seed=seeds, candidates=candidates,
                              guidance_scale=scale, max_new_tokens=bench.config.max_new_tokens))
    out = []
    for start in range(0, len(rows), chunk):
        part = rows[start:start + chunk]
        writing = pipeline.start_writing(part, [r.prefix for r in part], [r.seed for r in part],
                                         [r.decoding for r in part])
        texts = [pipeline.decoder.decode(ids) for ids in writing.batch.run()]
        out += [(row, texts[i * candidates:(i + 1) * candidates]) for i, row in enumerate(part)]
        print(f"scale {scale:g} {condition}: {len(out)} of {len(rows)} rows", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, prefixes="benchmarks/prefixes-dev.txt", out="benchmarks/results/choosers.json")
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--scales", type=float, nargs="+", default=[16.0, 64.0])
    args = parser.parse_args()
    from sklearn.metrics import roc_auc_score

    bench = SentimentBench.from_args(args)
    pipeline, judges, collapse = bench.pipeline, bench.scorer.judges, bench.scorer.collapse
    plain = bench.judge(get_methods()["plain"](pipeline), "none", "plain sampling")
    results: dict = {"plain": {key: plain[key] for key in ("cross_prefix_cosine", "prefix_cosine")}}
    for scale in args.scales:
        for label in ("positive", "negative"):
            written = write_candidates(bench, f"sentiment={label}", scale, args.candidates)
            texts = [text for _, options in written for text in options]
            prefixes = [row.prefix for row, options in written for _ in options]
            probability = {name: judge.probability(texts, "positive") for name, judge in judges.items()}
            positive = {name: [p > 0.5 for p in probabilities] for name, probabilities in probability.items()}
            as_asked = [all(flags[i] == (label == "positive") for flags in positive.values()) for i in range(len(texts))]
            embeddings = collapse.encoder.encode(texts)
            prefix_embedding = dict(zip(sorted(set(prefixes)), collapse.encoder.encode(sorted(set(prefixes)))))
            closeness = [float(e @ prefix_embedding[p]) for e, p in zip(embeddings, prefixes)]
            probe, label_index, _ = written[0][0].guide.terms[0]
            with torch.no_grad():
                on_target = torch.softmax(probe(pipeline.encoder.encode(texts)), -1)[:, label_index].tolist()
            key = f"scale {scale:g} | sentiment={label}"
            results[key] = {"probe_auc": {name: roc_auc_score([f == (label == "positive") for f in flags], on_target)
                                          for name, flags in positive.items()},
                            "other_judge_auc": {name: roc_auc_score(flags, probability[other])
                                                for name, flags in positive.items() for other in probability
                                                if other != name}}

            def pick(rule: str, first: int, k: int, row) -> int:
                """The candidate `rule` keeps of the k from index `first` (one sample's)."""
                options = range(first, first + k)
                meets = [i for i in options if as_asked[i]]
                if rule == "first":
                    return first
                if rule == "probe only":
                    return max(options, key=lambda i: on_target[i])
                if rule == "judges' oracle" and meets:
                    return max(meets, key=lambda i: closeness[i])
                return first + pipeline.choose_candidate(row, texts[first:first + k])

            for k in sorted({min(4, args.candidates), args.candidates}):
                for rule in ("first", "the default", "probe only", "judges' oracle"):
                    picks = [pick(rule, n * args.candidates, k, row) for n, (row, _) in enumerate(written)]
                    chosen, chosen_prefixes = [texts[i] for i in picks], [prefixes[i] for i in picks]
                    word, share = top_word_share(chosen_prefixes, chosen)
                    results[key][f"{rule}, K={k}"] = {
                        **{f"{name}=positive": sum(flags[i] for i in picks) / len(picks)
                           for name, flags in positive.items()},
                        "homogeneity": cross_prefix_cosine(embeddings[picks], chosen_prefixes)
                        / plain["cross_prefix_cosine"],
                        "prefix_relevance": sum(closeness[i] for i in picks) / len(picks) / plain["prefix_cosine"],
                        "top_word": word, "top_word_share": share}
            print(key, json.dumps(results[key], indent=1), flush=True)
            args.out.write_text(json.dumps({"prefixes": str(args.prefixes), "samples_per_condition": len(bench.rows),
                                            "candidates": args.candidates, "results": results}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
