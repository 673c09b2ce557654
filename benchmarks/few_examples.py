"""Attributes from a handful of examples: held-out accuracy of a logistic-regression probe and a prototype probe
(normalised class centroids) trained on 5, 10, 20 and 50 examples a label, over 20 random draws each, on one fixed
held-out set per attribute; it sets `PROTOTYPE_BELOW` in dglm/attributes/probes.py.

    python benchmarks/few_examples.py
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from pathlib import Path

import numpy as np

from dglm.attributes.probes import fit_logistic, fit_prototypes
from dglm.data.labelled import read_labelled
from dglm.stages.encoder import SentenceEncoder

DATASETS = {"sentiment": "data/sentiment.csv", "topic": "data/topic.csv"}
FITS = {"logistic": lambda x, y: fit_logistic(x, y, 10.0), "prototype": fit_prototypes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5, 10, 20, 50], help="training examples a label")
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--held-out", type=int, default=200, help="held-out texts a label (fixed across draws)")
    parser.add_argument("--pool", type=int, default=300, help="texts a label to draw training examples from")
    parser.add_argument("--encoder", default="all-MiniLM-L6-v2", help="the guidance's encoder")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/few-examples.json"))
    args = parser.parse_args()

    encoder = SentenceEncoder(args.encoder)
    report = {"encoder": args.encoder, "draws": args.draws, "held_out_per_label": args.held_out, "results": {}}
    for attribute, path in DATASETS.items():
        texts, labels = read_labelled(path, "text", "label")
        rng = random.Random(0)
        by_label: dict[str, list[str]] = {}
        for text, label in zip(texts, labels):
            by_label.setdefault(label, []).append(text)
        for pool in by_label.values():
            rng.shuffle(pool)
        classes = sorted(by_label)
        held_out = [(text, c) for c, label in enumerate(classes) for text in by_label[label][: args.held_out]]
        pools = {c: by_label[label][args.held_out : args.held_out + args.pool] for c, label in enumerate(classes)}
        x_test = encoder.encode([text for text, _ in held_out], progress=True).numpy().astype(np.float64)
        y_test = np.array([c for _, c in held_out])
        pool_embeddings = {c: encoder.encode(pool).numpy().astype(np.float64) for c, pool in pools.items()}
        results = report["results"][attribute] = {}
        for size in args.sizes:
            accuracies = {name: [] for name in FITS}
            for draw in range(args.draws):
                pick = random.Random(1000 * size + draw)
                chosen = {c: pick.sample(range(len(embeddings)), size) for c, embeddings in pool_embeddings.items()}
                x = np.concatenate([pool_embeddings[c][rows] for c, rows in chosen.items()])
                y = np.concatenate([[c] * size for c in chosen])
                for name, fit in FITS.items():
                    coef, intercept = fit(x, y)
                    accuracies[name].append(float(((x_test @ coef.T + intercept).argmax(1) == y_test).mean()))
            results[str(size)] = {name: {"mean": statistics.mean(a), "sd": statistics.stdev(a)} for name, a in accuracies.items()}
            print(attribute, size, {name: f"{r['mean']:.3f} +- {r['sd']:.3f}" for name, r in results[str(size)].items()})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
