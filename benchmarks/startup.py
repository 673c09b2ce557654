"""How long `dglm generate "The movie" -n 1 --seed 0` takes from the shell, against `python -c "import torch,
transformers"` on the same machine, side by side.

Each repeat runs every command once, interleaved, so that machine noise hits them alike; the table gives medians.
"warm" runs with the caches built (the de-quantised decoder, the file hashes); "cold" runs with an empty cache folder
(DGLM_CACHE), as a first run does. `--candidates 1` is timed too: the default's four candidates are part of the
generating. `--compare-with TREE` also times another checkout of dglm (say, an earlier commit's `git worktree`), run
from its source folders with this environment's packages.

    python benchmarks/startup.py --repeats 5 --cold-repeats 2 --compare-with /tmp/dglm-before
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GENERATE = [sys.executable, "-m", "dglm", "generate", "The movie", "-n", "1", "--seed", "0"]
BASELINE = [sys.executable, "-c", "import torch, transformers"]


def timed(command: list[str], env: dict[str, str]) -> float:
    """Seconds `command` takes, run from the environment's PWD (a tree's own folder: Python puts it first on the path)."""
    started = time.perf_counter()
    subprocess.run(command, env=env, cwd=env.get("PWD"), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def tree_command(command: list[str], tree: Path) -> tuple[list[str], dict[str, str]]:
    """`command` run on dglm and its built-in plugins from the source folders of `tree`. Python starts without
    `site` (-S), so that an editable install of another checkout cannot take its place, and finds this environment's
    packages through PYTHONPATH, after the tree."""
    import sysconfig

    paths = [str(tree), str(tree / "plugins"), str(tree / "classifiers"), sysconfig.get_paths()["purelib"]]
    return [command[0], "-S", *command[1:]], {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "PWD": str(tree)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="warm runs of each command (default 5)")
    parser.add_argument("--cold-repeats", type=int, default=1, help="runs with an empty cache (default 1)")
    parser.add_argument("--compare-with", type=Path, metavar="TREE", help="another dglm checkout to time beside this one")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/startup.json"))
    args = parser.parse_args()

    here = {**os.environ, "PWD": str(Path(__file__).resolve().parents[1])}
    commands = {"import torch, transformers": (BASELINE, here), "dglm generate, warm": (GENERATE, here),
                "dglm generate --candidates 1, warm": ([*GENERATE, "--candidates", "1"], here),
                "dglm --help": ([sys.executable, "-m", "dglm", "--help"], here)}
    if args.compare_with:
        commands[f"dglm generate, warm, {args.compare_with.name}"] = tree_command(GENERATE, args.compare_with.resolve())
    for command, env in commands.values():  # builds every cache once, and warms the file system
        timed(command, env)
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.repeats):
        for name, (command, env) in commands.items():
            times[name].append(timed(command, env))
    times["dglm generate, cold (empty cache)"] = []
    for _ in range(args.cold_repeats):
        with tempfile.TemporaryDirectory() as cache:
            times["dglm generate, cold (empty cache)"].append(timed(GENERATE, {**here, "DGLM_CACHE": cache}))

    baseline = statistics.median(times["import torch, transformers"])
    rows = [{"command": name, "median_s": round(statistics.median(runs), 2), "runs_s": [round(t, 2) for t in runs],
             "x_import_torch_transformers": round(statistics.median(runs) / baseline, 2)}
            for name, runs in times.items() if runs]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "rows": rows}, indent=2) + "\n")
    print("| command | median (s) | x `import torch, transformers` | runs (s) |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['command']} | {row['median_s']} | {row['x_import_torch_transformers']} | "
              f"{', '.join(map(str, row['runs_s']))} |")


if __name__ == "__main__":
    main()
