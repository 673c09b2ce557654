"""`dglm serve`: an OpenAI-compatible completions server with attributes per request, and a playground page.

`create_app` builds the web application over a `Pipeline`; `serve` runs it with uvicorn."""

from __future__ import annotations

from dglm.pipeline import Pipeline
from dglm.server.api import ServerLimits, create_app

__all__ = ["ServerLimits", "create_app", "serve"]


def serve(pipeline: Pipeline, model_name: str, host: str = "127.0.0.1", port: int = 8000,
          limits: ServerLimits | None = None, api_key: str | None = None) -> None:
    """Serve until SIGINT or SIGTERM. On either, new requests get a 503 and requests in flight are finished
    (for up to --request-timeout-s) before the process exits."""
    import uvicorn

    limits = limits or ServerLimits()
    app = create_app(pipeline, model_name, limits, api_key)

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            app.state.drain["draining"] = True
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, host=host, port=port, timeout_graceful_shutdown=int(limits.request_timeout_s) + 1,
                            log_level="info", access_log=True)
    DrainingServer(config).run()
