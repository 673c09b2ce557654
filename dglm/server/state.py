"""What a running server holds: its limits, the model names it answers to, and the objects its routes share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dglm.constraints import Constraint, parse_constraint
from dglm.errors import DglmError
from dglm.pipeline import Pipeline
from dglm.server.engine import Engine
from dglm.server.metrics import ServerMetrics
from dglm.server.protocol import ApiError

BATCHING = ("continuous", "static")


@dataclass
class ServerLimits:
    """What one request may ask for, and how requests are batched (the `dglm serve` flags)."""

    max_batch_size: int = 32
    max_wait_ms: float = 20.0
    max_n: int = 16
    max_tokens: int = 256
    max_body_kb: int = 64
    request_timeout_s: float = 300.0
    max_queue: int = 256  # requests waiting to start; more are answered 429
    batching: str = "continuous"  # or "static": a batch runs to its end before the next starts

    def __post_init__(self) -> None:
        if self.batching not in BATCHING:
            raise DglmError(f"--batching must be one of {', '.join(BATCHING)}, got {self.batching!r}")
        for name, value in vars(self).items():
            if name == "batching":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
                raise DglmError(f"--{name.replace('_', '-')} must be a positive number, got {value!r}")


@dataclass
class ServedModels:
    """The model names a server answers to: its own, aliases that preset attributes (for clients that cannot send
    extra fields), and, with `accept_any`, any other name (for clients with a hard-coded default)."""

    name: str = "dglm-default"
    aliases: dict[str, list[Constraint]] = field(default_factory=dict)
    accept_any: bool = False

    def presets(self, requested: str | None) -> list[Constraint]:
        """The attributes a request for this model name starts with; an unknown name is a 404."""
        if requested in self.aliases:
            return self.aliases[requested]
        if requested in (None, self.name) or self.accept_any:
            return []
        served = ", ".join([self.name, *self.aliases])
        raise ApiError(404, f"the model {requested!r} does not exist; this server serves {served} (GET /v1/models)",
                       param="model", code="model_not_found")


def parse_alias(text: str) -> tuple[str, list[Constraint]]:
    """`NAME=ATTR=LABEL[:WEIGHT][,ATTR=LABEL...]`, the form of `dglm serve --alias`."""
    name, sep, targets = text.partition("=")
    if not sep or not name.strip() or not targets.strip():
        raise DglmError(f"--alias {text!r} is not of the form NAME=ATTR=LABEL[:WEIGHT][,ATTR=LABEL...], "
                        "e.g. cheerful=sentiment=positive,topic=sport:2")
    return name.strip(), [parse_constraint(part) for part in targets.split(",")]


@dataclass
class ServerState:
    """The objects every route reads (`app.state.server`): the pipeline, the batching engine, the served names, the
    limits, the metrics, the /v1/models entries, and whether the server is draining."""

    pipeline: Pipeline
    engine: Engine
    served: ServedModels
    limits: ServerLimits
    metrics: ServerMetrics
    models: dict[str, dict[str, Any]]
    draining: bool = False
