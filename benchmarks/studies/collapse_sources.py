"""Where does collapse come from: the probe, or how far guidance moves the latent?

1. The probe. The held-out corpus continuations are scored by the sentiment probe; for the most negative and the
   most positive ones: which sources they come from (against the pool's mix) and their commonest content words.
   If "negative" is accidents and deaths rather than opinion, guidance along the probe writes about accidents.
2. The latent. Guided latents for the development prefixes, with each guidance mode: how much alike they are across
   prefixes (mean cosine between latents of different prefixes, in the guidance's own encoder space, against the
   unguided latents'), how far guidance moved them (cosine to the unguided latent of the same seed), and which held-
   out continuations lie nearest (how many distinct ones, and their commonest content word).
3. A lever that keeps latents on real text: instead of pushing along the probe, replace each unguided latent by the
   nearest held-out continuation the probe puts on the asked side with probability >= p ("exemplar" guidance, the
   limit of a pull towards it). Reported: how alike these targets are across prefixes, how near they are to the
   unguided latent, and how often the TF-IDF sentiment judge reads the target continuation itself as asked: an
   upper bound on the control such guidance could carry into text.

No text is decoded, so it takes a few minutes on 2 CPU cores.

    python benchmarks/studies/collapse_sources.py --samples 10
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import torch

from dglm import Pipeline
from dglm.constraints import Constraint
from dglm.data.pairs import read_pairs
from dglm.data.prefixes import read_prefixes
from dglm.evaluation.collapse import content_words, cross_prefix_cosine, top_word_share
from dglm.seeding import sample_generators
from dglm.stages.guidance import BatchGuidance

MODES = {"gradient 256": {"guidance_scale": 256.0},
         "margin 0.99": {"guidance_mode": "margin", "guidance_target": 0.99, "guidance_scale": 256.0},
         "project 0.99": {"guidance_mode": "project", "guidance_target": 0.99}}


def probe_extremes(pipeline: Pipeline, pairs: list[dict], pool: torch.Tensor, count: int) -> dict:
    probe = pipeline.make_guide([Constraint("sentiment", "positive")]).terms[0][0]
    with torch.no_grad():
        positive = torch.softmax(probe(pool), dim=-1)[:, probe.labels.index("positive")]
    order = positive.argsort()
    mix = Counter(pair["source"] for pair in pairs)
    report = {"pool_sources": {source: round(n / len(pairs), 3) for source, n in mix.most_common()}}
    for name, rows in (("most negative", order[:count]), ("most positive", order.flip(0)[:count])):
        chosen = [pairs[i] for i in rows.tolist()]
        sources = Counter(pair["source"] for pair in chosen)
        words = Counter(word for pair in chosen for word in content_words(pair["continuation"], pair["prefix"]))
        report[name] = {"sources": {source: round(n / count, 3) for source, n in sources.most_common()},
                        "top_words": [(word, round(n / count, 3)) for word, n in words.most_common(12)]}
        print(name, "examples (corpus text: printed, never stored):", [pair["continuation"].strip() for pair in chosen[:6]])
    return report


def guided_latents(pipeline: Pipeline, rows: list[tuple[str, int]], label: str | None, settings: dict) -> torch.Tensor:
    diffusion, _ = pipeline.settings(**settings)
    guide = pipeline.make_guide([Constraint("sentiment", label)] if label else [], diffusion)
    latents = []
    for start in range(0, len(rows), 50):
        batch = rows[start : start + 50]
        guidance = BatchGuidance.same(guide, diffusion.guidance_scale, len(batch))
        with torch.no_grad():
            latents.append(pipeline.propose_latents([p for p, _ in batch], sample_generators([s for _, s in batch]),
                                                    guidance, diffusion))
    return pipeline.parts.normalizer.to_embedding(torch.cat(latents))


def latent_spread(pipeline: Pipeline, rows: list[tuple[str, int]], pairs: list[dict], pool: torch.Tensor,
                  unguided: torch.Tensor) -> dict:
    prefixes = [p for p, _ in rows]
    baseline = cross_prefix_cosine(unguided, prefixes)

    def describe(embeddings: torch.Tensor) -> dict:
        nearest = (embeddings @ pool.T).argmax(dim=-1).tolist()
        texts = [pairs[i]["continuation"] for i in nearest]
        word, share = top_word_share(prefixes, texts)
        return {"cross_prefix_cosine_vs_unguided": round(cross_prefix_cosine(embeddings, prefixes) / baseline, 3),
                "cosine_to_unguided_latent": round(float((embeddings * unguided).sum(-1).mean()), 3),
                "distinct_nearest_continuations": len(set(nearest)),
                "nearest_top_word": [word, round(share, 3)],
                "examples (printed only)": [text.strip() for text in texts[:: max(1, len(texts) // 5)][:5]]}

    report = {"unguided": describe(unguided)}
    for label in ("negative", "positive"):
        for mode, settings in MODES.items():
            report[f"{label}, {mode}"] = describe(guided_latents(pipeline, rows, label, settings))
    for key, value in report.items():  # the nearest continuations are corpus text: printed to read, not stored
        print(key, json.dumps(value, ensure_ascii=False), flush=True)
        del value["examples (printed only)"]
    return report


def nearest_labelled(pipeline: Pipeline, rows: list[tuple[str, int]], pairs: list[dict], pool: torch.Tensor,
                     unguided: torch.Tensor, judge_data: str, thresholds: tuple[float, ...] = (0.9, 0.99, 0.999)) -> dict:
    from dglm.evaluation.judges import TextJudge

    prefixes = [p for p, _ in rows]
    baseline = cross_prefix_cosine(unguided, prefixes)
    probe = pipeline.make_guide([Constraint("sentiment", "positive")]).terms[0][0]
    with torch.no_grad():
        positive = torch.softmax(probe(pool), dim=-1)[:, probe.labels.index("positive")]
    judge = TextJudge.train("sentiment", judge_data)
    report = {}
    for label in ("positive", "negative"):
        for threshold in thresholds:
            allowed = torch.where(positive >= threshold if label == "positive" else positive <= 1 - threshold)[0]
            if len(allowed) == 0:  # no pool continuation is that sure of the label
                report[f"{label}, p >= {threshold}"] = {"candidates": 0}
                continue
            chosen = allowed[(unguided @ pool[allowed].T).argmax(dim=-1)]
            texts = [pairs[i]["continuation"] for i in chosen.tolist()]
            word, share = top_word_share(prefixes, texts)
            report[f"{label}, p >= {threshold}"] = {
                "candidates": len(allowed),
                "cross_prefix_cosine_vs_unguided": round(cross_prefix_cosine(pool[chosen], prefixes) / baseline, 3),
                "cosine_to_unguided_latent": round(float((pool[chosen] * unguided).sum(-1).mean()), 3),
                "distinct_targets": len(set(chosen.tolist())), "top_word": [word, round(share, 3)],
                "judged_positive": round(sum(v == "positive" for v in judge.predict(texts)) / len(texts), 3)}
            print(label, threshold, json.dumps(report[f"{label}, p >= {threshold}"]), flush=True)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model")
    parser.add_argument("--prefixes", type=Path, default=Path("benchmarks/prefixes-dev.txt"))
    parser.add_argument("--pool", type=Path, default=Path("data/pairs-heldout.jsonl"), help="held-out pairs (dglm data build)")
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--extremes", type=int, default=200, help="how many of the most negative and positive to read")
    parser.add_argument("--judge", default="data/sentiment-judge.csv", help="the TF-IDF sentiment judge's training data")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/collapse-sources.json"))
    args = parser.parse_args()

    pipeline = Pipeline.from_pretrained(args.model)
    pairs = read_pairs(args.pool)
    pool = pipeline.encoder.encode([pair["continuation"] for pair in pairs], progress=True)
    rows = [(prefix, seed) for i, prefix in enumerate(read_prefixes(args.prefixes))
            for seed in range(i * args.samples, (i + 1) * args.samples)]
    unguided = guided_latents(pipeline, rows, None, {})
    report = {"pool": str(args.pool), "pool_size": len(pairs), "samples_per_condition": len(rows),
              "probe": probe_extremes(pipeline, pairs, pool, args.extremes),
              "latents": latent_spread(pipeline, rows, pairs, pool, unguided),
              "nearest_labelled": nearest_labelled(pipeline, rows, pairs, pool, unguided, args.judge)}
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(report["probe"], indent=1, ensure_ascii=False)[:3000])
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
