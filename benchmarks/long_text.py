"""Long text: one plan against segments (`segment_tokens`) and plain sampling, at 128 or 256 new tokens.

For sentiment=positive and sentiment=negative on the development prefixes, each method's continuations are judged as
`dglm eval` judges them (TF-IDF and mpnet sentiment judges, Gemma perplexity, collapse on mpnet), and also:
- repetition: the share of samples in which some lowercased word 4-gram occurs more than once, and the mean share of
  a sample's 4-grams that repeat an earlier one;
- the last third of each continuation's words, judged alone: its sentiment, its relevance to the prefix and the
  homogeneity of the last thirds across prefixes;
- the mean length in words, and the seconds a sample (batch 25).

    python benchmarks/long_text.py --tokens 128 --samples 4 --segments 24
"""

from __future__ import annotations

import argparse
import gzip
import json

from dglm.evaluation.bench import SentimentBench, add_common_arguments
from dglm.evaluation.harness import parse_condition
from dglm.evaluation.metrics import last_third, repetition
from dglm.plugins import get_methods


def relative_to(result: dict, plain: dict) -> None:
    """Homogeneity and prefix relevance (of the whole text and of its last third) as multiples of plain sampling's,
    and the length and time as ratios too."""
    for part, reference in ((result, plain), (result["last_third"], plain["last_third"])):
        part["homogeneity"] = part["cross_prefix_cosine"] / reference["cross_prefix_cosine"]
        part["prefix_relevance"] = part["prefix_cosine"] / reference["prefix_cosine"]
    result["words_x_plain"] = result["words"] / plain["words"]
    result["seconds_x_plain"] = result["seconds_per_sample"] / plain["seconds_per_sample"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, prefixes="benchmarks/prefixes-dev.txt", out="benchmarks/results/long-text.json")
    parser.add_argument("--tokens", type=int, default=128, help="new tokens a sample (default 128)")
    parser.add_argument("--segments", type=int, nargs="+", default=[24], help="segment_tokens to try (default 24)")
    args = parser.parse_args()

    bench = SentimentBench.from_args(args)
    bench.config.max_new_tokens = args.tokens
    methods = get_methods()
    runs = [("plain", "plain", {}, "none")]
    for name, options in [("one plan", {"segment_tokens": 0}), *[(f"segments of {n}", {"segment_tokens": n}) for n in args.segments]]:
        runs += [(name, "dglm", options, condition) for condition in ("sentiment=positive", "sentiment=negative")]
    results, samples = {}, []
    prefixes = [prefix for prefix, _ in bench.rows]
    for name, method_name, options, condition in runs:
        method = methods[method_name](bench.pipeline, **options)
        scores, texts = bench.judge_with_texts(method, condition, f"{name} {condition}")
        ends = [last_third(text) for text in texts]
        tail = bench.scorer(prefixes, ends, parse_condition(condition))
        repeated = [repetition(text) for text in texts]
        results[f"{name} | {condition}"] = {
            **{key: scores[key] for key in ("sentiment=positive", "sentiment@all-mpnet-base-v2=positive",
                                            "perplexity_median", "top_word", "top_word_share",
                                            "seconds_per_sample", "prefix_cosine", "cross_prefix_cosine")
               if key in scores},
            "repeating_share": sum(flag for flag, _ in repeated) / len(texts),
            "repeated_4gram_share": sum(share for _, share in repeated) / len(texts),
            "words": sum(len(text.split()) for text in texts) / len(texts),
            "last_third": {key: tail[key] for key in ("sentiment=positive", "sentiment@all-mpnet-base-v2=positive",
                                                      "prefix_cosine", "cross_prefix_cosine") if key in tail},
        }
        relative_to(results[f"{name} | {condition}"], results["plain | none"])
        print(name, condition, json.dumps(results[f"{name} | {condition}"]), flush=True)
        samples += [{"run": name, "condition": condition, "prefix": prefix, "seed": seed, "continuation": text}
                    for (prefix, seed), text in zip(bench.rows, texts)]
        report = {"prefixes": str(args.prefixes), "tokens": args.tokens, "samples_per_condition": len(bench.rows),
                  "results": results}
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        with gzip.open(args.out.with_suffix(".samples.jsonl.gz"), "wt", encoding="utf-8") as file:
            file.writelines(json.dumps(sample) + "\n" for sample in samples)
    print(f"wrote {args.out} and its samples")


if __name__ == "__main__":
    main()
