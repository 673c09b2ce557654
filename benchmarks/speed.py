"""Latency of guided and unguided DGLM against plain sampling from the same decoder, side by side.

Each repeat runs every variant once, interleaved, so that machine noise hits them alike; the table
gives medians and ratios to plain sampling with identical decoding settings.

    python benchmarks/speed.py --batch-sizes 25 --steps 20 --repeats 5
    python benchmarks/speed.py --batch-sizes 1 25 --steps 20 --candidates 1 2 4 8 --repeats 3   # what K costs
    python benchmarks/speed.py --batch-sizes 1 32 --steps 20 --candidates 1 4 --dtypes float32 bfloat16
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import torch

from dglm import Pipeline
from dglm.evaluation.metrics import median
from dglm.seeding import sample_generators


def batch_variants(pipeline: Pipeline, batch: int, args: argparse.Namespace) -> dict:
    """What is timed at one batch size: plain sampling from the decoder, DGLM unguided and guided."""
    decode = pipeline.config.decoding.updated(max_new_tokens=args.max_new_tokens)
    prefixes = ["The movie"] * batch

    def plain():
        pipeline.decoder.generate(prefixes, None, sample_generators(range(batch)), decode)

    variants = {"plain sampling": plain}
    for steps in args.steps:
        variants[f"dglm unguided, {steps} steps"] = lambda s=steps: pipeline.generate(prefixes[0], num_samples=batch, seed=0, steps=s, batch_size=batch, max_new_tokens=args.max_new_tokens)
        for k in args.candidates:
            for segment in [0, *args.segment_tokens]:
                name = (f"dglm guided, {steps} steps" + (f", {k} candidates" if k > 1 else "")
                        + (f", segments of {segment}" if segment else ""))
                variants[name] = lambda s=steps, k=k, segment=segment: pipeline.generate(
                    prefixes[0], attributes=[args.attr], num_samples=batch, seed=0, steps=s, batch_size=batch,
                    max_new_tokens=args.max_new_tokens, candidates=k, guidance_scale=args.guidance_scale,
                    guidance_classifier=args.guidance_classifier, segment_tokens=segment)
    return variants


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 25])
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20])
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--attr", default="sentiment=positive")
    parser.add_argument("--candidates", type=int, nargs="+", default=[1],
                        help="also time guided generation with each of these candidates settings (K proposals a sample, "
                             "one kept; 1 is the guided variant itself)")
    parser.add_argument("--guidance-scale", type=float, help="the guided variants' scale (default: the checkpoint's)")
    parser.add_argument("--guidance-classifier", help="the guided variants' classifier (default: the checkpoint's)")
    parser.add_argument("--segment-tokens", type=int, nargs="+", default=[],
                        help="also time guided generation written in segments of each of these many tokens")
    parser.add_argument("--model")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", nargs="+", default=["float32"], choices=["float32", "bfloat16"],
                        help="the decoder's formats; several are timed side by side, each against its own plain sampling")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/speed.json"))
    args = parser.parse_args()

    pipelines = {dtype: Pipeline.from_pretrained(args.model, device=args.device, dtype=dtype) for dtype in args.dtypes}
    rows = []
    for batch in args.batch_sizes:
        variants, plain_of = {}, {}  # each variant's plain sampling: the one in its own format
        for dtype, pipeline in pipelines.items():
            label = "" if len(pipelines) == 1 else f"{dtype}: "
            for name, run in batch_variants(pipeline, batch, args).items():
                variants[label + name], plain_of[label + name] = run, label + "plain sampling"
        for run in variants.values():
            run()  # warm-up
        times = {name: [] for name in variants}
        for _ in range(args.repeats):
            for name, run in variants.items():
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                start = time.perf_counter()
                run()
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - start)
        for name, values in times.items():
            base = median(times[plain_of[name]])
            rows.append({"batch": batch, "variant": name, "median_s": median(values), "samples_per_s": batch / median(values),
                         "ratio_to_plain": median(values) / base})
            print(f"batch {batch:3d}  {name:52s} {median(values):8.3f} s  {batch / median(values):6.2f} samples/s  x{median(values) / base:.2f}")
    peak = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if args.device.startswith("cuda"):
        peak["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    machine = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    print(f"machine: {machine}; {peak}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "repeats": args.repeats, "rows": rows, **peak}, indent=2) + "\n")


if __name__ == "__main__":
    main()
