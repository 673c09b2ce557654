"""Load on `dglm serve`: the same requests sent one at a time, then by 4, 16 and 32 concurrent clients.

Starts the server (bundled model unless --model) on a free localhost port, sends --requests completion requests
(different prompts, attributes and seeds; one sample each), and checks that every answer at every level
equals the one-at-a-time answer for the same request: nothing lost, duplicated or mixed up. Reports p50 / p95
latency, samples per second and the server's peak memory (VmHWM). Run it on an otherwise idle CPU:

    python benchmarks/serve_load.py --requests 64
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PROMPTS = ["The movie", "Yesterday the government", "The team", "Our new phone", "The market", "She said that",
           "In the final minutes", "The company announced"]
TARGETS = [["sentiment=positive"], ["sentiment=negative"], ["topic=sport"], ["topic=politics:2", "sentiment=positive"],
           [], ["topic=tech", "topic=business:-1"], [{"name": "sentiment", "label": "negative", "weight": 1.5}],
           ["topic=entertainment"]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port: int, body: dict) -> tuple[float, dict]:
    start = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    connection.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    answer = json.loads(response.read())
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {answer}")
    return time.perf_counter() - start, answer


def run_level(port: int, requests: list[dict], clients: int) -> tuple[float, list[float], list[str]]:
    """Wall time, latencies and texts of all requests, sent by `clients` clients (each one request at a time)."""
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda body: post(port, body), requests))
    wall = time.perf_counter() - start
    return wall, [latency for latency, _ in results], [answer["choices"][0]["text"] for _, answer in results]


def peak_memory_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=64, help="requests per level (default 64)")
    parser.add_argument("--levels", type=int, nargs="+", default=[4, 16, 32], help="concurrent clients after the one-at-a-time run")
    parser.add_argument("--model", help="checkpoint folder (default: the bundled model)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/serve-load.json"))
    args = parser.parse_args()

    requests = [{"prompt": PROMPTS[i % len(PROMPTS)], "attributes": TARGETS[(i // len(PROMPTS) + i) % len(TARGETS)],
                 "seed": 1000 + i, "max_tokens": 20} for i in range(args.requests)]
    port = free_port()
    command = [sys.executable, "-m", "dglm", "serve", "--port", str(port)] + (["--model", args.model] if args.model else [])
    log = tempfile.NamedTemporaryFile("w+", suffix=".log")  # a file, not a pipe: a full pipe would stall the server
    server = subprocess.Popen(command, stderr=log, text=True)
    try:
        while "Uvicorn running on" not in Path(log.name).read_text():
            if server.poll() is not None:
                raise SystemExit(f"the server did not start:\n{Path(log.name).read_text()}")
            time.sleep(0.2)
        post(port, {"prompt": "Warm up", "max_tokens": 4})
        rows = []
        wall, latencies, reference = run_level(port, requests, 1)
        rows.append((1, wall, latencies))
        for clients in args.levels:
            wall, latencies, texts = run_level(port, requests, clients)
            wrong = [i for i, (got, want) in enumerate(zip(texts, reference)) if got != want]
            if wrong:
                raise SystemExit(f"{clients} clients: requests {wrong} got other text than when sent one at a time")
            rows.append((clients, wall, latencies))
        memory = peak_memory_mib(server.pid)
    finally:
        server.terminate()
        server.wait(60)
    base = args.requests / rows[0][1]
    report = {"requests": args.requests, "samples_per_request": 1, "max_tokens": 20, "server_peak_memory_mib": round(memory),
              "levels": [{"clients": c, "wall_s": round(w, 2), "p50_s": round(statistics.median(l), 2),
                          "p95_s": round(statistics.quantiles(l, n=20)[18], 2), "samples_per_s": round(args.requests / w, 3),
                          "vs_one_at_a_time": round(args.requests / w / base, 2)} for c, w, l in rows]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print("| clients | p50 latency (s) | p95 latency (s) | samples/s | vs one at a time |\n|---|---|---|---|---|")
    for level in report["levels"]:
        print(f"| {level['clients']} | {level['p50_s']} | {level['p95_s']} | {level['samples_per_s']} | {level['vs_one_at_a_time']}x |")
    print(f"all {args.requests} requests answered at every level, each with the text it got alone; "
          f"server peak memory {report['server_peak_memory_mib']} MiB")


if __name__ == "__main__":
    main()
