"""Read short lever trials against a baseline run: one stage's training loss, batch for batch.

A trial (`configs/trials/*.yaml`) is the baseline run's config with one lever changed, trained for its first
few hundred steps of the stage the lever belongs to (the prompt generator's joint steps, or the denoiser's).
The data order, the noise and the learning-rate schedule come from the seed and the total steps, which every
trial shares with the baseline and the long run, so step s of each saw the same batch; in the first epoch
each batch is new to all of them, so the loss on it is a held-out estimate.
Runs are named by their folder under ~/.cache/dglm/runs. The script compares mean losses over windows of
steps, gives each run's paired difference from the baseline, and plots the smoothed curves.

    python benchmarks/studies/lever_trials.py --baseline long-rank8 --runs trial-adapter-mlp trial-soft-prompts-16 long-both
    python benchmarks/studies/lever_trials.py --stage denoiser --runs trial-denoiser-deeper --steps 1500 --window 500
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

RUNS = Path("~/.cache/dglm/runs").expanduser()


def losses(run: str, stage: str) -> list[float]:
    state = RUNS / run / f"{stage}-state.json"
    if not state.is_file():
        raise SystemExit(f"no {stage} state in {state.parent}: train the run first (see configs/trials/)")
    return json.loads(state.read_text())["losses"]


def windows(values: list[float], steps: int, width: int) -> list[float]:
    return [statistics.fmean(values[start : start + width]) for start in range(0, steps, width)]


def paired_difference(trial: list[float], baseline: list[float]) -> dict[str, float]:
    """Mean and standard error of trial - baseline over the same batches (pairing removes the batch-to-batch noise)."""
    differences = [t - b for t, b in zip(trial, baseline)]
    return {"mean": round(statistics.fmean(differences), 4),
            "standard_error": round(statistics.stdev(differences) / len(differences) ** 0.5, 5)}


def plot(curves: dict[str, list[float]], stage: str, path: Path, smooth: int = 50) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    for name, values in curves.items():
        smoothed = [statistics.fmean(values[i - smooth : i]) for i in range(smooth, len(values) + 1)]
        axes.plot(range(smooth, len(values) + 1), smoothed, label=name)
    axes.set(xlabel=f"{stage} step", ylabel=f"loss, mean of {smooth} steps",
             title=f"{stage}: lever trials against the baseline run")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True, help="run folders under ~/.cache/dglm/runs to compare")
    parser.add_argument("--baseline", default="long-rank8", help="the run folder the others are read against")
    parser.add_argument("--stage", choices=["prompt-generator", "denoiser"], default="prompt-generator",
                        help="the stage whose losses are compared (prompt generator: its joint steps)")
    parser.add_argument("--steps", type=int, default=750, help="steps compared")
    parser.add_argument("--window", type=int, default=250, help="steps per mean")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/lever-trials"))
    args = parser.parse_args()

    curves = {name: losses(name, args.stage)[: args.steps] for name in [args.baseline, *args.runs]}
    short = [name for name, values in curves.items() if len(values) < args.steps]
    if short:
        raise SystemExit(f"{', '.join(short)} trained fewer than {args.steps} {args.stage} steps")
    last = slice(args.steps - args.window, args.steps)
    report = {"stage": args.stage, "steps": args.steps, "window": args.window,
              "mean_loss": {name: [round(v, 4) for v in windows(values, args.steps, args.window)] for name, values in curves.items()},
              "last_window_difference": {name: paired_difference(curves[name][last], curves[args.baseline][last])
                                         for name in args.runs}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    plot(curves, args.stage, args.out.with_suffix(".png"))
    heads = [f"steps {s}-{min(s + args.window, args.steps) - 1}" for s in range(0, args.steps, args.window)]
    print("| run | " + " | ".join(heads) + " |\n|---|" + "---|" * len(heads))
    for name, means in report["mean_loss"].items():
        print(f"| {name} | " + " | ".join(f"{m:.4f}" for m in means) + " |")
    for name, difference in report["last_window_difference"].items():
        print(f"{name} - {args.baseline}, last {args.window} steps, same batches: "
              f"{difference['mean']:+.4f} +- {difference['standard_error']:.5f}")


if __name__ == "__main__":
    main()
