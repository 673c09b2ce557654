"""Long generation runs: throughput on the bundled model, and memory as the prefix file grows.

    python benchmarks/generate_runs.py --prefixes 1000                 # 1,000 prefixes x 2 samples x 8 tokens
    python benchmarks/generate_runs.py --memory 10000 1000000          # tracemalloc peak on tiny models

Throughput runs `dglm generate --prefix-file F -n 2 --max-new-tokens 8 --output OUT` on the bundled model, in one
process and, with --processes 2, under torchrun with two. Memory runs the same command in this process on tiny
random models (1 diffusion step, 1 new token: what is measured is everything but the models) and reports the
peak of Python allocations that tracemalloc sees: flat means the same peak at 10,000 and 1,000,000 prefixes.
Run it on an otherwise idle CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from dglm.data.prefixes import read_prefixes

ROOT = Path(__file__).resolve().parent.parent


def write_prefixes(path: Path, count: int) -> Path:
    pool = read_prefixes(ROOT / "benchmarks" / "prefixes-dev.txt")  # cycled: the development prefixes
    with open(path, "w") as out:
        for i in range(count):
            out.write(pool[i % len(pool)] + "\n")
    return path


def throughput(prefixes: int, processes: int, work: Path) -> dict:
    prefix_file = write_prefixes(work / "prefixes.txt", prefixes)
    out = work / f"out-{processes}.jsonl"
    args = ["generate", "--prefix-file", str(prefix_file), "-n", "2", "--max-new-tokens", "8", "--seed", "0", "--output", str(out)]
    if processes == 1:
        command = [sys.executable, "-m", "dglm", *args]
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port",
                   str(port), "-m", "dglm", *args]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(max(1, os.cpu_count() // processes))} if processes > 1 else {})}
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    samples = out.read_bytes().count(b"\n")
    return {"processes": processes, "samples": samples, "seconds": round(seconds, 1),
            "samples_per_s": round(samples / seconds, 2)}


def memory(counts: list[int], work: Path) -> list[dict]:
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import build_tiny_models, tiny_pipeline_config

    from dglm.cli import main
    from dglm.pipeline import Pipeline

    models = build_tiny_models(work)
    checkpoint = Pipeline.from_config(tiny_pipeline_config(models)).save_pretrained(work / "tiny")
    rows = []
    for count in counts:
        prefix_file = write_prefixes(work / f"prefixes-{count}.txt", count)
        out = work / f"memory-{count}.jsonl"
        tracemalloc.start()
        start = time.perf_counter()
        code = main(["generate", "--prefix-file", str(prefix_file), "--model", str(checkpoint), "--output", str(out),
                     "--seed", "0", "--steps", "1", "--max-new-tokens", "1", "--batch-size", "256"])
        seconds = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert code == 0
        rows.append({"prefixes": count, "samples": out.read_bytes().count(b"\n"), "peak_python_mib": round(peak / 2**20, 2),
                     "seconds": round(seconds, 1), "file_mib": round(prefix_file.stat().st_size / 2**20, 1)})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prefixes", type=int, help="throughput: prefixes on the bundled model (2 samples, 8 tokens each)")
    parser.add_argument("--processes", type=int, nargs="+", default=[1], help="throughput: process counts to run (default 1)")
    parser.add_argument("--memory", type=int, nargs="+", metavar="N", help="memory: prefix counts to run on tiny models")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/generate-runs.json")
    args = parser.parse_args()
    report = json.loads(args.out.read_text()) if args.out.is_file() else {}
    with tempfile.TemporaryDirectory() as folder:
        if args.prefixes:
            report["throughput"] = [throughput(args.prefixes, n, Path(folder)) for n in args.processes]
            print(report["throughput"])
        if args.memory:
            report["memory"] = memory(args.memory, Path(folder))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
