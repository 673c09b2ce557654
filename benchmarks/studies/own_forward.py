"""Does dglm's own Llama forward pass (`dglm.stages.llama`) write faster than transformers' once loaded, and is its
text the same?

The bundled pipeline is loaded twice in one process, its decoder once through dglm's forward pass (the default) and
once through transformers (as training loads it); the encoder and everything else are shared. Each repeat times every
case on both, interleaved, with one torch thread (the CLI's and the server's default); the table gives medians.

    python benchmarks/studies/own_forward.py --repeats 7
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from dglm import Pipeline
from dglm.stages.decoder import SoftPromptDecoder

PREFIXES = ["The movie", "My neighbour", "The chicken", "The match", "Our company", "The old house", "The river",
            "The teacher"]
CASES = {  # name: (prefixes, samples a prefix, attributes, settings)
    "guided, one candidate, 1 sample": (PREFIXES[:1], 1, "sentiment=positive", {"candidates": 1}),
    "guided, the default's four candidates, 1 sample": (PREFIXES[:1], 1, "sentiment=positive", {}),
    "unguided, one candidate, 1 sample": (PREFIXES[:1], 1, None, {"candidates": 1}),
    "guided, one candidate, 16 samples": (PREFIXES, 2, "sentiment=positive", {"candidates": 1}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/own-forward.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    own = Pipeline.from_pretrained()
    theirs = Pipeline.from_pretrained(encoder=own.encoder,
                                      decoder=SoftPromptDecoder.load(own.config.decoder, trainable=True))
    pipelines = {"dglm's forward pass": own, "transformers": theirs}
    times: dict[str, dict[str, list[float]]] = {case: {name: [] for name in pipelines} for case in CASES}
    same_text = {case: True for case in CASES}
    for repeat in range(args.repeats):
        for case, (prefixes, samples, attributes, settings) in CASES.items():
            texts = []
            for name, pipeline in pipelines.items():
                started = time.perf_counter()
                out = pipeline.generate(prefixes, attributes, num_samples=samples, seed=repeat, **settings)
                times[case][name].append(time.perf_counter() - started)
                texts.append([sample.continuation for sample in out])
            same_text[case] &= texts[0] == texts[1]
    medians = {case: {name: statistics.median(runs) for name, runs in by_name.items()}
               for case, by_name in times.items()}
    rows = [{"case": case, **{name: round(value, 3) for name, value in by_name.items()},
             "ratio": round(by_name["dglm's forward pass"] / by_name["transformers"], 3), "same_text": same_text[case]}
            for case, by_name in medians.items()]
    args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "repeats": args.repeats, "threads": 1,
                                    "rows": rows, "runs_s": times}, indent=2) + "\n")
    print("| case | dglm's forward pass (s) | transformers (s) | ratio | same text |\n|---|---|---|---|---|")
    for row in rows:
        ours = row["dglm's forward pass"]
        print(f"| {row['case']} | {ours} | {row['transformers']} | {row['ratio']} | {row['same_text']} |")


if __name__ == "__main__":
    main()
