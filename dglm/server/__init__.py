"""`dglm serve`: an OpenAI-compatible completions server with attributes per request, and a playground page.

`create_app` builds the web application over a `Pipeline`; `serve` runs it with uvicorn until a signal,
`serve_in_thread` runs it beside the caller's code (a notebook, a test) for as long as a `with` block lasts."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from dglm.pipeline import Pipeline
from dglm.server.api import create_app
from dglm.server.state import ServedModels, ServerLimits

__all__ = ["ServedModels", "ServerLimits", "create_app", "serve", "serve_in_thread"]


def serve(pipeline: Pipeline, model_name: str | ServedModels, host: str = "127.0.0.1", port: int = 8000,
          limits: ServerLimits | None = None, api_key: str | None = None, allowed_origins: list[str] = (),
          public_docs: bool = False) -> None:
    """Serve until SIGINT or SIGTERM. On either, the server keeps listening but answers new requests with a 503
    while the requests in flight finish (for up to --request-timeout-s), then stops; a second signal stops it at
    once."""
    import uvicorn

    limits = limits or ServerLimits()
    app = create_app(pipeline, model_name, limits, api_key, allowed_origins, public_docs)

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            if app.state.server.draining:
                super().handle_exit(sig, frame)
                return
            app.state.server.draining = True
            threading.Thread(target=self.exit_when_idle, args=(sig, frame), name="dglm-drain", daemon=True).start()

        def exit_when_idle(self, sig, frame) -> None:
            app.state.server.engine.wait_idle(limits.request_timeout_s)
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, host=host, port=port, timeout_graceful_shutdown=int(limits.request_timeout_s) + 1,
                            log_level="info", access_log=True)
    DrainingServer(config).run()


@contextmanager
def serve_in_thread(app, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run `app` on a background thread (port 0: a free one) and yield its base URL; it stops when the block ends."""
    import socket

    import uvicorn

    if port == 0:
        with socket.socket() as probe:
            probe.bind((host, 0))
            port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="dglm-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start on {host}:{port}")
        time.sleep(0.05)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
