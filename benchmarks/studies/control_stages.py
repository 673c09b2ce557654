"""Where is attribute control lost: in the guided latent, or between the latent and the text?

Stage 1, the latent. Guided latents for the benchmark prefixes are scored by the guidance probe (what
guidance optimises) and, through the nearest held-out continuation in the encoder's space, by the
independent judge: roughly the target rate that a perfect prompt generator and decoder could reach.

Stage 2, latent to text. Labelled sentences that the judge was not trained on are
split after their first words; the decoder continues each prefix from the latent of the sentence's
own continuation (re-noised as at inference). The judge's rate of each label on those generated
continuations is compared with the true continuations (the ceiling) and with continuations decoded
without soft prompts (the floor).

    python benchmarks/studies/control_stages.py --attribute sentiment --labelled data/sentiment.csv \\
        --judge data/sentiment-judge.csv --scales 16 64
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from dglm import Pipeline
from dglm.constraints import Constraint
from dglm.data.labelled import pick_sentences, read_labelled
from dglm.data.pairs import read_pairs
from dglm.data.prefixes import read_prefixes
from dglm.evaluation.judges import TextJudge
from dglm.evaluation.metrics import label_shares
from dglm.seeding import sample_generators
from dglm.stages.guidance import BatchGuidance


def label_rates(judge: TextJudge, texts: list[str]) -> dict[str, float]:
    return {label: round(share, 3) for label, share in label_shares(judge.predict(texts), judge.model.classes_).items()}




def latent_stage(pipeline: Pipeline, judge: TextJudge, attribute: str, prefixes: list[str], samples: int,
                 scales: list[float], pool_texts: list[str]) -> dict:
    """Probe score and judged label of the nearest pool sentence, for guided latents of every label."""
    pool = F.normalize(pipeline.encoder.encode(pool_texts), dim=-1)
    rows = [(prefix, seed) for prefix in prefixes for seed in range(samples)]
    labels = list(judge.model.classes_)
    settings = [("none", 0.0)] + [(label, scale) for label in labels for scale in scales]
    report = {}
    for label, scale in settings:
        guide = None if label == "none" else pipeline.make_guide([Constraint(attribute, label)])
        with torch.no_grad():
            latents = torch.cat([
                pipeline.propose_latents([p for p, _ in rows[i : i + 50]], sample_generators([s for _, s in rows[i : i + 50]]),
                                         BatchGuidance.same(guide, scale, len(rows[i : i + 50])))
                for i in range(0, len(rows), 50)
            ])
        embeddings = pipeline.parts.normalizer.to_embedding(latents)
        nearest = (F.normalize(embeddings, dim=-1) @ pool.T).max(dim=-1)
        key = "unguided" if label == "none" else f"{attribute}={label} at scale {scale:g}"
        report[key] = {
            "probe_p_target": guide and round(guide.embedding_log_prob(embeddings).exp().mean().item(), 3),
            "nearest_cosine": round(nearest.values.mean().item(), 3),
            "nearest_judged": label_rates(judge, [pool_texts[i] for i in nearest.indices.tolist()]),
        }
        print(key, json.dumps(report[key]), flush=True)
    return report


def text_stage(pipeline: Pipeline, judge: TextJudge, texts: list[str], labels: list[str], per_label: int,
               prefix_words: int, seed: int) -> dict:
    """Judge continuations decoded from true latents of labelled sentences, against truth and no prompt."""
    settings = pipeline.config.decoding.updated(max_new_tokens=20)
    report = {}
    for label, chosen in pick_sentences(texts, labels, per_label, prefix_words + 6, seed).items():
        prefixes = [" ".join(words[:prefix_words]) for words in chosen]
        truths = [" " + " ".join(words[prefix_words:]) for words in chosen]
        decoded, bare = [], []
        for i in range(0, len(chosen), 25):
            seeds = range(seed + i, seed + i + len(prefixes[i : i + 25]))
            with torch.no_grad():
                latents = pipeline.parts.normalizer.to_latent(pipeline.encoder.encode(truths[i : i + 25]))
                soft = pipeline.soft_prompts(latents, sample_generators(seeds))
            decoded += pipeline.decoder.generate(prefixes[i : i + 25], soft, sample_generators(seeds), settings)
            bare += pipeline.decoder.generate(prefixes[i : i + 25], None, sample_generators(seeds), settings)
        report[f"sentences labelled {label}"] = {
            "true continuations": label_rates(judge, truths),
            "decoded from their latent": label_rates(judge, decoded),
            "decoded without soft prompts": label_rates(judge, bare),
            "examples": [p + d for p, d in zip(prefixes[:3], decoded[:3])],
        }
        print(label, json.dumps(report[f"sentences labelled {label}"]), flush=True)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attribute", default="sentiment")
    parser.add_argument("--labelled", type=Path, default=Path("data/sentiment.csv"),
                        help="labelled sentences (text,label) the judge was not trained on")
    parser.add_argument("--judge", type=Path, default=Path("data/sentiment-judge.csv"), help="the judge's training data")
    parser.add_argument("--prefixes", type=Path, default=Path("benchmarks/prefixes.txt"))
    parser.add_argument("--pool", type=Path, default=Path("data/pairs-heldout.jsonl"),
                        help="held-out pairs whose continuations are the nearest-neighbour pool")
    parser.add_argument("--samples", type=int, default=10, help="guided latents per prefix and label")
    parser.add_argument("--scales", type=float, nargs="+", help="guidance scales (default: the checkpoint's)")
    parser.add_argument("--sentences", type=int, default=100, help="labelled sentences per label")
    parser.add_argument("--prefix-words", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    pipeline = Pipeline.from_pretrained(args.model)
    judge = TextJudge.train(args.attribute, str(args.judge))
    prefixes = read_prefixes(args.prefixes)
    pool = [pair["continuation"] for pair in read_pairs(args.pool)]
    texts, labels = read_labelled(str(args.labelled), "text", "label")
    scales = args.scales or [pipeline.config.diffusion.guidance_scale]
    report = {
        "judge_held_out_accuracy": round(judge.held_out_accuracy, 3),
        "latent": latent_stage(pipeline, judge, args.attribute, prefixes, args.samples, scales, pool),
        "text": text_stage(pipeline, judge, texts, labels, args.sentences, args.prefix_words, args.seed),
    }
    out = args.out or Path(f"benchmarks/results/control-stages-{args.attribute}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
