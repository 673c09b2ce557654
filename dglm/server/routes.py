"""The routes of `dglm serve` on one `APIRouter`: OpenAI's completions and models, the attributes, health, metrics,
the playground and the API description. Each reads the server's shared objects from `request.app.state.server`
(`ServerState`); `dglm.server.api.create_app` assembles them into an app."""

from __future__ import annotations

import asyncio
import time
from importlib.resources import files
from typing import Any

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from dglm.errors import DglmError
from dglm.inputs import check_prefix
from dglm.pipeline import Row
from dglm.plugins import get_attributes
from dglm.segments import written_in_segments
from dglm.server.engine import EngineClosed, Job, QueueFull
from dglm.server.protocol import (SETTINGS, ApiError, CompletionRequest, read_json, refuse_unsupported,
                                  request_constraint, request_field, request_stops, token_biases, validation_message)
from dglm.server.reply import Reply
from dglm.server.state import ServerState

router = APIRouter()


def server_of(request: Request) -> ServerState:
    return request.app.state.server


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    return {"status": "ok", "model": server_of(request).served.name}


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def playground() -> HTMLResponse:
    return HTMLResponse((files("dglm.server") / "playground.html").read_text(encoding="utf-8"))


@router.get("/v1/models")
async def models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": list(server_of(request).models.values())}


@router.get("/v1/models/{model_id}")
async def model(model_id: str, request: Request) -> dict[str, Any]:
    entries = server_of(request).models
    if model_id not in entries:
        raise ApiError(404, f"model {model_id!r} is not served; served: {', '.join(entries)}", param="model",
                       code="model_not_found")
    return entries[model_id]


@router.get("/docs", include_in_schema=False)
async def docs() -> HTMLResponse:
    return get_swagger_ui_html(openapi_url="/openapi.json", title="dglm API",
                               swagger_js_url="/docs/assets/swagger-ui-bundle.js",
                               swagger_css_url="/docs/assets/swagger-ui.css",
                               swagger_favicon_url="/docs/assets/favicon-32x32.png")


@router.get("/metrics", include_in_schema=False)
async def prometheus(request: Request) -> Response:
    return Response(server_of(request).metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get("/v1/attributes")
async def attributes(request: Request) -> dict[str, Any]:
    pipeline = server_of(request).pipeline
    return {"object": "list", "data": [a.summary() for a in get_attributes().values() if pipeline.probe_fits(a.probe)]}


@router.post("/v1/chat/completions", include_in_schema=False)
async def chat() -> None:
    raise ApiError(400, "dglm continues text and has no chat endpoint: send the text to continue as `prompt` to "
                        "POST /v1/completions", code="unsupported_endpoint")


@router.post("/v1/completions", openapi_extra={"requestBody": {"required": True, "content": {
    "application/json": {"schema": CompletionRequest.model_json_schema()}}}})
async def completions(request: Request) -> Response:
    server = server_of(request)
    limits = server.limits
    body = await read_json(request, limits.max_body_kb * 1024)
    try:
        completion = CompletionRequest.model_validate(body)
    except ValidationError as error:
        message, field = validation_message(error)
        raise ApiError(400, message, param=field) from None
    rows = plan_rows(completion, server)
    loop, events = asyncio.get_running_loop(), asyncio.Queue()

    def emit(event) -> None:
        try:
            loop.call_soon_threadsafe(events.put_nowait, event)
        except RuntimeError:  # the event loop has stopped (shutdown)
            pass

    job = Job(rows, emit, stream=completion.stream, scores=completion.return_scores,
              stop=request_stops(completion.stop),
              logprobs=completion.logprobs)
    try:
        server.engine.submit(job)
    except EngineClosed as error:
        raise ApiError(503, str(error), kind="server_error") from None
    except QueueFull as error:
        raise ApiError(429, str(error), kind="server_error", code="queue_full",
                       headers={"Retry-After": str(error.retry_after)}) from None
    reply = Reply(job, events, completion.model or server.served.name, time.monotonic() + limits.request_timeout_s,
                  limits.request_timeout_s, echo=bool(completion.echo))
    if completion.stream:
        include_usage = bool(completion.stream_options and completion.stream_options.include_usage)
        return StreamingResponse(reply.stream(include_usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return JSONResponse(await reply.collect(request))


def plan_rows(completion: Any, server: ServerState) -> list[Row]:
    """Check a completion request against the model and the server's limits, and turn it into rows: choice
    i * n + j continues prompt i with seed `seed + i * n + j`, as `dglm generate` and `Pipeline.generate` do.
    A model alias's attributes come first, the request's are added to them."""
    pipeline, limits = server.pipeline, server.limits
    refuse_unsupported(completion)
    if completion.echo and completion.logprobs is not None:
        raise ApiError(400, "logprobs with echo (the prompt's log-probabilities) is not supported by "
                            "dglm; send one of them",
                       param="logprobs", code="unsupported_parameter")
    logit_bias = token_biases(completion.logit_bias or {}, pipeline.decoder.vocab_size)
    presets = server.served.presets(completion.model)
    prompts = [completion.prompt] if isinstance(completion.prompt, str) else completion.prompt
    count = len(prompts) * completion.n
    if completion.n < 1 or count > limits.max_n:
        raise ApiError(400, f"n must be at least 1 and n times the number of prompts at most {limits.max_n} (--max-n); "
                            f"got n={completion.n} for {len(prompts)} prompt(s)", param="n")
    overrides = {name: getattr(completion, name) for name in SETTINGS}
    if (overrides["max_new_tokens"] or 0) > limits.max_tokens:
        raise ApiError(400, f"max_tokens must be at most {limits.max_tokens} (--max-tokens), got "
                            f"{overrides['max_new_tokens']}",
                       param="max_tokens")
    if not prompts:
        raise ApiError(400, "no prompt given; pass a string or a non-empty list of strings", param="prompt")
    if overrides["max_new_tokens"] is None:  # the model's default, within the server's cap
        overrides["max_new_tokens"] = min(pipeline.config.decoding.max_new_tokens, limits.max_tokens)
    try:
        for index, prompt in enumerate(prompts):  # every prompt before any row, each named as a prompt
            check_prefix(index, prompt, noun="prompt")
        constraints = presets + [request_constraint(target) for target in completion.attributes]
        rows = list(pipeline.plan(prompts, constraints, completion.n, seed=completion.seed, logit_bias=logit_bias,
                                  **overrides))
        if rows[0].diffusion.candidates > 1 and completion.logprobs is not None:
            raise DglmError(f"logprobs with candidates above 1 is not supported: a candidate is chosen after it is "
                            f"written; send candidates 1 with logprobs (this model's default is "
                            f"{pipeline.config.diffusion.candidates})", field="candidates")
        if (any(written_in_segments(row) for row in rows) and completion.logprobs is not None
                and not server.engine.streams_segments):
            raise DglmError("logprobs with segment_tokens needs continuous batching (this server runs --batching "
                            "static); send segment_tokens 0 with logprobs", field="segment_tokens")
    except DglmError as error:  # an error without a field is about the attributes (resolving them, their probes)
        raise ApiError(400, str(error), param=request_field(error.field) if error.field else "attributes") from None
    return rows
