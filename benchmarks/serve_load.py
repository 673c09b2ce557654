"""Load on `dglm serve`, as users see it: static and continuous batching side by side, in one run.

For each batching mode (`--batching`), a server is started on a free localhost port (bundled model unless --model),
and the same requests are sent:
- alone, one after another: each request's reference text, and a lone request's latency;
- by closed-loop clients (`--clients`, e.g. 1 4 16 32 64): each sends `--per-client` requests, one at a time, after
  one warm-up request of its own;
- as open-loop Poisson arrivals at `--loads` (fractions, e.g. 0.5 0.7 0.9) of the capacity continuous batching
  reached closed-loop (the same arrival rates for both modes).
Requests mix short and long ones (`--short-tokens`, `--long-tokens`, one in `--long-every` long), with different
prompts, attributes and seeds; one in `--stream-every` streams, so that time to first token (TTFT) is seen. Every
answer at every level must equal that request's text alone: nothing lost, duplicated or mixed up. Optionally (`--overload CLIENTS`) the
continuous server is restarted with `--max-queue 32` and overloaded: every answer must be a 200 or a 429, and the
server healthy afterwards. Reports p50 / p95 latency and TTFT (and the p50 of the short requests alone, like
with like against a lone short request), throughput and the server's peak memory (VmHWM), as
JSON and a plot. Run it on an otherwise idle CPU:

    python benchmarks/serve_load.py --candidates 1 --out benchmarks/results/serve-load-k1.json
    python benchmarks/serve_load.py --candidates 1 --modes continuous --dtypes float32 bfloat16   # what bfloat16 gives
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import socket
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


def send(port: int, body: dict) -> dict:
    """One completion: its status, text, latency (to the end of the answer) and, when it streams, its time to first
    token."""
    start = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=900)
    connection.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    if response.status != 200 or not body.get("stream"):
        answer = json.loads(response.read() or b"{}")
        text = answer["choices"][0]["text"] if response.status == 200 else None
        return {"status": response.status, "text": text, "latency": time.perf_counter() - start, "ttft": None,
                **({} if response.status == 200 else {"error": answer})}
    text, first = "", None
    for line in response:
        if not line.startswith(b"data: {"):
            continue
        event = json.loads(line[6:])
        if "error" in event:
            return {"status": 500, "text": None, "latency": time.perf_counter() - start, "ttft": None, "error": event}
        piece = event["choices"][0]["text"] if event["choices"] else ""
        if piece and first is None:
            first = time.perf_counter() - start
        text += piece
    return {"status": 200, "text": text, "latency": time.perf_counter() - start, "ttft": first}


class Server:
    """`dglm serve` in a subprocess on a free port, for as long as a `with` block lasts."""

    def __init__(self, batching: str, model: str | None, extra: list[str] = ()):
        self.port = free_port()
        self.command = [sys.executable, "-m", "dglm", "serve", "--port", str(self.port), "--batching", batching,
                        "--threads", "2", *(["--model", model] if model else []), *extra]

    def __enter__(self) -> Server:
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log")  # a file: a full pipe would stall the server
        self.process = subprocess.Popen(self.command, stderr=self.log, text=True)
        while "Uvicorn running on" not in Path(self.log.name).read_text():
            if self.process.poll() is not None:
                raise SystemExit(f"the server did not start:\n{Path(self.log.name).read_text()}")
            time.sleep(0.2)
        return self

    def peak_memory_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def healthy(self) -> bool:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        connection.request("GET", "/health")
        return connection.getresponse().status == 200

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.process.wait(120)


def closed_loop(port: int, bodies: list[dict], clients: int, per_client: int) -> tuple[float, list[tuple[int, dict]]]:
    """`clients` clients, each sending a warm-up request and then `per_client` requests one at a time; the wall time
    of the measured requests, and each (request index, answer)."""
    def client(c: int) -> list[tuple[int, dict]]:
        send(port, bodies[(c * 7919) % len(bodies)])  # warm-up, not counted
        ready.append(time.perf_counter())
        picks = [(c * per_client + k) % len(bodies) for k in range(per_client)]
        return [(i, send(port, bodies[i])) for i in picks]

    ready: list[float] = []
    with ThreadPoolExecutor(clients) as pool:
        results = [answer for part in pool.map(client, range(clients)) for answer in part]
    return time.perf_counter() - min(ready), results


def open_loop(port: int, bodies: list[dict], rate: float, count: int, seed: int) -> list[tuple[int, dict]]:
    """`count` requests arriving as a Poisson process of `rate` a second (each index and answer)."""
    draw, at, arrivals = random.Random(seed), 0.0, []
    for _ in range(count):
        at += draw.expovariate(rate)
        arrivals.append(at)
    start = time.perf_counter()

    def arrive(k: int) -> tuple[int, dict]:
        time.sleep(max(0.0, start + arrivals[k] - time.perf_counter()))
        return k % len(bodies), send(port, bodies[k % len(bodies)])

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(arrive, range(count)))


def summary(results: list[tuple[int, dict]], reference: list[str], short: set[int], wall: float | None = None) -> dict:
    """Latency and TTFT quantiles over every answered request, and the p50 over the short ones (`short`: their
    indices), which compares like with like against a lone short request; wrong texts and refusals; throughput."""
    ok = [answer for _, answer in results if answer["status"] == 200]
    latencies, ttfts = [a["latency"] for a in ok], [a["ttft"] for a in ok if a["ttft"] is not None]
    short_latencies = [a["latency"] for i, a in results if a["status"] == 200 and i in short]
    row = {"requests": len(results), "p50_s": quantile(latencies, 0.5), "p95_s": quantile(latencies, 0.95),
           "short_p50_s": quantile(short_latencies, 0.5),
           "ttft_p50_s": quantile(ttfts, 0.5), "ttft_p95_s": quantile(ttfts, 0.95),
           "wrong_text": sum(a["status"] == 200 and a["text"] != reference[i] for i, a in results),
           "not_200": sum(a["status"] != 200 for _, a in results)}
    if wall is not None:
        row |= {"wall_s": round(wall, 2), "samples_per_s": round(len(results) / wall, 3)}
    return row


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))], 3)


def run_mode(batching: str, dtype: str, args, bodies: list[dict], capacity: float | None) -> dict:
    with Server(batching, args.model, ["--dtype", dtype]) as server:
        send(server.port, {"prompt": "Warm up", "max_tokens": 4})
        alone = [send(server.port, body) for body in bodies]
        reference = [a["text"] for a in alone]
        short = [a["latency"] for a, body in zip(alone, bodies) if body["max_tokens"] == args.short_tokens]
        first = [a["ttft"] for a, body in zip(alone, bodies) if body["max_tokens"] == args.short_tokens and a["ttft"]]
        short_ones = {i for i, body in enumerate(bodies) if body["max_tokens"] == args.short_tokens}
        report = {"alone": {"p50_s": quantile(short, 0.5), "ttft_p50_s": quantile(first, 0.5)},
                  "closed_loop": [], "poisson": []}
        for clients in args.clients:
            wall, results = closed_loop(server.port, bodies, clients, args.per_client)
            report["closed_loop"].append({"clients": clients, **summary(results, reference, short_ones, wall)})
            print(batching, dtype, report["closed_loop"][-1], flush=True)
        capacity = capacity or max(level["samples_per_s"] for level in report["closed_loop"])
        for load in args.loads:
            results = open_loop(server.port, bodies, load * capacity, args.poisson_requests, seed=int(load * 100))
            report["poisson"].append({"load": load, "rate_per_s": round(load * capacity, 3),
                                      **summary(results, reference, short_ones)})
            print(batching, dtype, report["poisson"][-1], flush=True)
        report["peak_memory_mib"] = round(server.peak_memory_mib())
        report["reference"] = reference
    return report


def overload(args, bodies: list[dict]) -> dict:
    """`--overload` closed-loop clients against a continuous server whose queue holds 32 requests."""
    with Server("continuous", args.model, ["--max-queue", "32"]) as server:
        with ThreadPoolExecutor(args.overload) as pool:
            answers = list(pool.map(lambda k: send(server.port, bodies[k % len(bodies)]), range(2 * args.overload)))
        statuses = [a["status"] for a in answers]
        return {"clients": args.overload, "requests": len(answers), "ok": statuses.count(200),
                "refused_429": statuses.count(429), "other": len(statuses) - statuses.count(200) - statuses.count(429),
                "healthy_after": server.healthy()}


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 4.5))
    for mode, result in report["modes"].items():
        levels = result["closed_loop"]
        clients = [level["clients"] for level in levels]
        left.plot(clients, [level["samples_per_s"] for level in levels], "o-", label=mode)
        middle.plot(clients, [level["p50_s"] for level in levels], "o-", label=f"{mode} p50")
        middle.plot(clients, [level["p95_s"] for level in levels], "x--", label=f"{mode} p95")
        middle.plot(clients, [level["short_p50_s"] for level in levels], "s:", label=f"{mode} p50 of short requests")
        loads = [row["load"] for row in result["poisson"]]
        right.plot(loads, [row["p50_s"] for row in result["poisson"]], "o-", label=f"{mode} latency p50")
        right.plot(loads, [row["ttft_p95_s"] for row in result["poisson"]], "x--", label=f"{mode} TTFT p95")
    for axis in (left, middle):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("closed-loop clients")
    left.set_ylabel("samples / s")
    left.set_title("throughput")
    middle.set_ylabel("seconds")
    middle.set_title("latency")
    right.set_xlabel("Poisson arrivals, fraction of capacity")
    right.set_ylabel("seconds")
    right.set_title("open loop")
    for axis in (left, middle, right):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    modes = " against ".join(report["modes"])
    figure.suptitle(f"dglm serve, {modes} batching (candidates {report['candidates']}, "
                    f"{report['short_tokens']}/{report['long_tokens']} tokens)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", nargs="+", default=["static", "continuous"], choices=["static", "continuous"])
    parser.add_argument("--dtypes", nargs="+", default=["float32"], choices=["float32", "bfloat16"],
                        help="the server's decoder format (--dtype); several run one after another, each mode in each")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 32, 64])
    parser.add_argument("--per-client", type=int, default=4, help="measured requests per closed-loop client")
    parser.add_argument("--loads", type=float, nargs="+", default=[0.5, 0.7, 0.9])
    parser.add_argument("--poisson-requests", type=int, default=48)
    parser.add_argument("--distinct", type=int, default=64, help="distinct requests (each sent alone for reference)")
    parser.add_argument("--short-tokens", type=int, default=20)
    parser.add_argument("--long-tokens", type=int, default=60)
    parser.add_argument("--long-every", type=int, default=4, help="one request in this many is long")
    parser.add_argument("--candidates", type=int, help="candidates a sample (default: the model's)")
    parser.add_argument("--segment-tokens", type=int, help="segment_tokens of every request (default: the model's; "
                                                           "0 plans each request once)")
    parser.add_argument("--stream-every", type=int, default=2, help="one request in this many streams (its time to "
                                                                    "first token is measured); 0: none")
    parser.add_argument("--overload", type=int, default=0, help="then this many clients against a queue of 32")
    parser.add_argument("--capacity", type=float, help="samples/s the Poisson loads are fractions of (default: what "
                                                       "continuous batching reached closed-loop in this run, in each "
                                                       "format)")
    parser.add_argument("--model", help="checkpoint folder (default: the bundled model)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/serve-load.json"))
    args = parser.parse_args()

    bodies = [{"prompt": PROMPTS[i % len(PROMPTS)], "attributes": TARGETS[(i // len(PROMPTS) + i) % len(TARGETS)],
               "seed": 1000 + i, "max_tokens": args.long_tokens if i % args.long_every == 1 else args.short_tokens,
               "stream": bool(args.stream_every) and i % args.stream_every == 0,
               **({"candidates": args.candidates} if args.candidates else {}),
               **({"segment_tokens": args.segment_tokens} if args.segment_tokens is not None else {})}
              for i in range(args.distinct)]
    report = {"candidates": args.candidates or "model default", "stream_every": args.stream_every,
              "segment_tokens": "model default" if args.segment_tokens is None else args.segment_tokens,
              "short_tokens": args.short_tokens,
              "long_tokens": args.long_tokens, "long_every": args.long_every, "per_client": args.per_client,
              "modes": {}}
    references: dict[str, list] = {}
    for dtype in args.dtypes:
        capacity = args.capacity
        for mode in sorted(args.modes, key=lambda m: m != "continuous"):  # continuous first: its capacity sets rates
            name = mode if len(args.dtypes) == 1 else f"{mode}, {dtype}"
            report["modes"][name] = run_mode(mode, dtype, args, bodies, capacity)
            capacity = capacity or max(level["samples_per_s"] for level in report["modes"][name]["closed_loop"])
            references.setdefault(dtype, []).append(report["modes"][name].pop("reference"))
    report["modes_agree"] = all(r == texts[0] for texts in references.values() for r in texts)  # within a format
    if args.overload:
        report["overload"] = overload(args, bodies)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, args.out.with_suffix(".png"))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
