"""Training throughput, before and after a change, and fp32 against bf16 autocast, in one run.

Each variant trains one stage for a few steps from the bundled checkpoint with `dglm train`, run as a
subprocess from a source tree (the old one from a git worktree, e.g. `git worktree add /tmp/dglm-old
COMMIT`), on the same data, and reports examples per second (from the training time the run records,
which leaves out loading) and the mean loss over the steps. Variants are interleaved over the repeats
and the median is reported, because a shared CPU's speed drifts. Run it on an otherwise idle CPU:

    python benchmarks/train_speed.py --old-tree /tmp/dglm-old --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from dglm.config import TrainConfig

ROOT = Path(__file__).resolve().parent.parent


def variant_config(base: TrainConfig, work: Path, stage: str, steps: int, precision: str | None) -> dict:
    """A flat training config (no `extends`, which an old tree may not read) for a short run of one stage."""
    config = base.to_dict()
    config.update(run_dir=str(work / "run"), output=str(work / "output"))
    config["data"].update(max_pairs=2000, all_pairs_from=[])
    key = stage.replace("-", "_")
    config[key].update(steps=steps, checkpoint_every=10 * steps)
    config["prompt_generator"]["bag_of_words_steps"] = 0  # time the joint step alone
    for section in ("denoiser", "prompt_generator"):
        if precision is None:
            config[section].pop("precision")  # an old tree knows no precision: it trains in fp32
        else:
            config[section]["precision"] = precision
    return config


def run_variant(tree: Path, config: dict, work: Path, stage: str) -> dict:
    """Train one stage from a fresh copy of the bundled checkpoint; return examples/s and the mean loss."""
    shutil.rmtree(work / "output", ignore_errors=True)
    shutil.copytree(ROOT / "dglm" / "default", work / "output")
    for state in (work / "run").glob(f"{stage}-state.*"):
        state.unlink()
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, "-m", "dglm", "train", stage, "--config", str(path)], env=env, cwd=tree,
                          capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"dglm train {stage} from {tree} failed:\n{done.stderr[-3000:]}")
    state = json.loads((work / "run" / f"{stage}-state.json").read_text())
    batch = config[stage.replace("-", "_")]["batch_size"]
    return {"examples_per_s": state["step"] * batch / state["seconds"], "mean_loss": statistics.mean(state["losses"]),
            "losses": state["losses"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old-tree", type=Path, help="source tree of the commit to compare with (a git worktree)")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "train-cpu.yaml")
    parser.add_argument("--denoiser-steps", type=int, default=60)
    parser.add_argument("--prompt-generator-steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "train-speed.json")
    args = parser.parse_args()

    base = TrainConfig.from_yaml(args.config)
    base.data.train = str(Path(base.data.train).resolve())
    variants = [("after, fp32", ROOT, "fp32"), ("after, bf16", ROOT, "bf16")]
    if args.old_tree:
        variants.insert(0, ("before, fp32", args.old_tree.resolve(), None))
    steps = {"denoiser": args.denoiser_steps, "prompt-generator": args.prompt_generator_steps}
    results: dict = {stage: {name: [] for name, _, _ in variants} for stage in steps}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for repeat in range(args.repeats):
            for stage, count in steps.items():
                for name, tree, precision in variants:
                    outcome = run_variant(tree, variant_config(base, work, stage, count, precision), work, stage)
                    results[stage][name].append(outcome)
                    print(f"repeat {repeat + 1} {stage:16s} {name:13s} {outcome['examples_per_s']:8.1f} examples/s  "
                          f"mean loss {outcome['mean_loss']:.4f}", flush=True)
    summary = {}
    for stage, by_variant in results.items():
        summary[stage] = {}
        for name, outcomes in by_variant.items():
            summary[stage][name] = {
                "examples_per_s_median": statistics.median(o["examples_per_s"] for o in outcomes),
                "examples_per_s": [round(o["examples_per_s"], 2) for o in outcomes],
                "mean_loss": round(statistics.mean(o["mean_loss"] for o in outcomes), 4),
            }
        first = summary[stage][variants[0][0]]["examples_per_s_median"]
        for name in summary[stage]:
            summary[stage][name]["speed_vs_first"] = round(summary[stage][name]["examples_per_s_median"] / first, 2)
    report = {"command": " ".join(sys.argv), "steps": steps, "results": summary}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
