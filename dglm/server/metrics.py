"""Prometheus metrics of `dglm serve` at GET /metrics: requests by status, tokens, batch sizes, queue wait, latency.

Each app has its own registry, so that several servers in one process (tests, notebooks) keep their own counts."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
SECONDS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("dglm_completion_requests", "completion requests answered, by HTTP status", ["status"],
                                registry=self.registry)
        self.prompt_tokens = Counter("dglm_prompt_tokens", "prompt tokens of the requests run", registry=self.registry)
        self.completion_tokens = Counter("dglm_completion_tokens", "tokens generated", registry=self.registry)
        self.batch_size = Histogram("dglm_batch_size", "samples in each batch run", buckets=BATCH_BUCKETS,
                                    registry=self.registry)
        self.queue_wait = Histogram("dglm_queue_wait_seconds", "time from a request's arrival to the start of its "
                                                               "first "
                                                               "batch", buckets=SECONDS_BUCKETS, registry=self.registry)
        self.latency = Histogram("dglm_completion_seconds", "time from a completion request's arrival to the end of "
                                                            "its answer (streamed "
                                                            "or not)", buckets=SECONDS_BUCKETS, registry=self.registry)

        self.queue_depth = Gauge("dglm_queue_depth", "requests waiting to start (a full queue answers 429, "
                                                     "counted in dglm_completion_requests_total)",
                                 registry=self.registry)
        self.rows_in_flight = Gauge("dglm_rows_in_flight", "rows decoded at the last decoder step",
                                    registry=self.registry)

    def exposition(self) -> bytes:
        """The metrics in Prometheus' text format."""
        return generate_latest(self.registry)


class Metered:
    """ASGI middleware: counts each completion request by its status and times it until its last byte is sent."""

    def __init__(self, app, metrics: ServerMetrics, path: str = "/v1/completions"):
        self.app, self.metrics, self.path = app, metrics, path

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        start, status = time.monotonic(), [500]

        async def send_and_note(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            self.metrics.requests.labels(status=str(status[0])).inc()
            self.metrics.latency.observe(time.monotonic() - start)
