"""Does the prompt generator carry meaning, and what does it cost in fluency? Decode held-out pairs from the
true continuation latent (re-noised as at inference), from the denoiser's unguided proposal, from another
pair's latent (shuffled: same decoder, wrong meaning) and with no soft prompt (on the checkpoint's decoder and
on the decoder as published). For each way: the mean cosine between the generated text's embedding and the
true continuation's, and the median perplexity of the text under the evaluation's perplexity model, beside
that of the true continuations themselves.

    python benchmarks/fidelity.py --pairs data/pairs-heldout.jsonl -n 200
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dglm import Pipeline
from dglm.data.pairs import read_pairs
from dglm.evaluation.judges import PerplexityJudge
from dglm.evaluation.metrics import median
from dglm.seeding import sample_generators


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=Path, default=Path("data/pairs-heldout.jsonl"))
    parser.add_argument("-n", "--num-pairs", type=int, default=200)
    parser.add_argument("--model")
    parser.add_argument("--adapter-scale", type=float, default=1.0,
                        help="merge the decoder adapter at this fraction of its trained strength (default 1)")
    parser.add_argument("--perplexity-model", default="gemma-3-270m", help="causal LM that scores fluency (default gemma-3-270m)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/fidelity.json"))
    args = parser.parse_args()

    perplexity = PerplexityJudge(args.perplexity_model)
    pipeline = Pipeline.from_pretrained(args.model, adapter_scale=args.adapter_scale)
    pairs = read_pairs(args.pairs, args.num_pairs)
    prefixes, targets = [p["prefix"] for p in pairs], [p["continuation"] for p in pairs]
    target_embeddings = pipeline.encoder.encode(targets)
    settings = pipeline.config.decoding.updated(max_new_tokens=20)
    cosines: dict[str, list[float]] = {}
    perplexities: dict[str, list[float]] = {"the true continuation": perplexity(prefixes, targets)}
    for start in range(0, len(pairs), 25):
        rows = slice(start, start + 25)
        seeds = range(start, start + len(prefixes[rows]))
        generators = sample_generators(seeds)
        with torch.no_grad():
            soft = pipeline.soft_prompts(pipeline.parts.normalizer.to_latent(target_embeddings[rows]), generators)
            # As generation does: the re-noising continues each sample's generator after the diffusion.
            proposal_generators = sample_generators(seeds)
            proposed = pipeline.soft_prompts(pipeline.propose_latents(prefixes[rows], proposal_generators), proposal_generators)
        ways = {
            "with soft prompts from the true latent": (pipeline.decoder, soft),
            "with soft prompts from the denoiser's proposal": (pipeline.decoder, proposed),
            "with soft prompts from a shuffled latent": (pipeline.decoder, soft.roll(1, dims=0)),
            "without soft prompts": (pipeline.decoder, None),
            "without soft prompts, decoder as published": (pipeline.plain_decoder(), None),
        }
        for name, (decoder, prompts) in ways.items():
            texts = decoder.generate(prefixes[rows], prompts, sample_generators(seeds), settings)
            cosines.setdefault(name, []).extend((pipeline.encoder.encode(texts) * target_embeddings[rows]).sum(-1).tolist())
            perplexities.setdefault(name, []).extend(perplexity(prefixes[rows], texts))
    report: dict = {name: sum(values) / len(values) for name, values in cosines.items()}
    report["perplexity_median"] = {name: median(values) for name, values in perplexities.items()}
    report["adapter_scale"] = args.adapter_scale
    report["pairs"] = len(pairs)
    print(json.dumps(report, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
