"""`dglm serve`'s web application: OpenAI's completions API, extended with attributes, over one `Pipeline`.

FastAPI on uvicorn. `create_app` only assembles: the shared state (`dglm.server.state`), the routes
(`dglm.server.routes`), the middleware (the API key, draining, metrics, CORS) and the error handlers, which answer
in OpenAI's shape (`dglm.server.protocol`). The model work is done by a batching engine (`dglm.server.continuous` or
`dglm.server.static`) on its own thread.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import time
from collections.abc import AsyncIterator

import swagger_ui_bundle
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.staticfiles import StaticFiles

from dglm.pipeline import Pipeline
from dglm.plugins import attribute_terms
from dglm.server.continuous import ContinuousEngine
from dglm.server.engine import log
from dglm.server.metrics import Metered, ServerMetrics
from dglm.server.protocol import ApiError, model_settings
from dglm.server.routes import router
from dglm.server.state import ServedModels, ServerLimits, ServerState
from dglm.server.static import StaticEngine

PUBLIC_PATHS = {"/health", "/"}  # the page is static and holds no data; it sends the key with every API call
DOCS_PATHS = ("/docs", "/openapi.json")  # public only when the operator says so (--public-docs)


class Guard:
    """ASGI middleware: the API key (every path but the public ones) and refusing new requests while draining."""

    def __init__(self, app, api_key: str | None, server: ServerState, public_docs: bool = False):
        self.app, self.api_key, self.server, self.public_docs = app, api_key, server, public_docs

    def is_public(self, path: str) -> bool:
        return path in PUBLIC_PATHS or self.public_docs and path.startswith(DOCS_PATHS)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] != "/health":
            problem = None
            if self.server.draining:
                problem = ApiError(503, "the server is shutting down; send "
                                        "the request again later", kind="server_error")
            elif self.api_key and not self.is_public(scope["path"]):
                sent = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
                if not hmac.compare_digest(sent.encode(), f"Bearer {self.api_key}".encode()):
                    problem = ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer KEY' "
                                            "with the key the server was started with", code="invalid_api_key",
                                       kind="authentication_error", headers={"WWW-Authenticate": 'Bearer realm="dglm"'})
            if problem is not None:
                await problem.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(pipeline: Pipeline, model_name: str | ServedModels = "dglm-default", limits: ServerLimits | None = None,
               api_key: str | None = None, allowed_origins: list[str] = (), public_docs: bool = False) -> FastAPI:
    """The web application; `dglm serve` runs it with uvicorn, tests and applications may run it themselves.
    `app.state.server.engine` is the batching engine (its `batch_sizes` show how requests were batched). Pages from
    `allowed_origins` may call the API from a browser (CORS; none by default). The API description (/docs, served
    from the swagger-ui-bundle package, nothing fetched from outside, and /openapi.json) needs the key unless
    `public_docs`."""
    limits = limits or ServerLimits()
    served = model_name if isinstance(model_name, ServedModels) else ServedModels(model_name)
    for constraints in served.aliases.values():
        attribute_terms(constraints)  # an alias naming an unknown attribute or label fails at start, not per request
    metrics = ServerMetrics()
    settings, created = model_settings(pipeline), int(time.time())
    models = {name: {"id": name, "object": "model", "created": created, "owned_by": "dglm", "settings": settings,
                     "attributes": [dataclasses.asdict(c) for c in served.presets(name)]}
              for name in [served.name, *served.aliases]}
    engine_class = ContinuousEngine if limits.batching == "continuous" else StaticEngine
    engine = engine_class(pipeline, limits.max_batch_size, limits.max_wait_ms, metrics, limits.max_queue)
    server = ServerState(pipeline, engine, served, limits, metrics, models)

    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await asyncio.to_thread(server.engine.close, limits.request_timeout_s)

    app = FastAPI(title="dglm", description="Controllable text generation: OpenAI-compatible "
                                            "completions with attributes.",
                  lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.server = server
    app.include_router(router)
    app.add_middleware(Guard, api_key=api_key, server=server, public_docs=public_docs)
    app.mount("/docs/assets", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-assets")
    app.add_middleware(Metered, metrics=metrics)  # outside the Guard: refused requests are counted too
    if allowed_origins:  # added last, so outermost: a browser's preflight carries no key and must not meet the Guard
        app.add_middleware(CORSMiddleware, allow_origins=list(allowed_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
    return app


async def api_error(request: Request, error: ApiError) -> JSONResponse:
    return error.response()


async def http_error(request: Request, error: HTTPException) -> JSONResponse:
    """Starlette's 404s and 405s, in OpenAI's shape and saying what the API has."""
    message = {404: f"no endpoint {request.method} {request.url.path}; the API is POST /v1/completions, "
                    "GET /v1/models, GET /v1/attributes, GET /health (docs at /docs)",
               405: f"{request.method} is not accepted by {request.url.path}"}.get(error.status_code, str(error.detail))
    return ApiError(error.status_code, message, code="not_found" if error.status_code == 404 else None).response()


async def unexpected(request: Request, error: Exception) -> JSONResponse:
    """A 500 that carries no exception text (the log has the traceback)."""
    log.exception("unexpected error answering %s %s", request.method, request.url.path)
    return ApiError(500, "internal error: the server could not answer this request; its log says why",
                    kind="server_error").response()
