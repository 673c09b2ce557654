"""The HTTP layer of `dglm serve`: OpenAI's completions API, extended with attributes, over one `Pipeline`.

FastAPI on uvicorn: requests are checked by pydantic models (built from the generation settings'
declarations, so a new setting is a new request field with nothing else to change), the OpenAPI description
comes for free at /docs, and server-sent events are a plain streaming response. The model work is done by
`BatchingEngine` on its own thread; this module validates, hands jobs over and shapes the answers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import math
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any

import swagger_ui_bundle
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, create_model
from starlette.exceptions import HTTPException
from starlette.staticfiles import StaticFiles

from dglm.config import accepted, declared_settings
from dglm.constraints import Constraint, parse_constraint
from dglm.errors import DglmError
from dglm.inputs import check_prefix, stop_strings, unicode_problem
from dglm.pipeline import Pipeline, Row
from dglm.plugins import attribute_terms, get_attributes
from dglm.server.engine import BatchingEngine, Delta, EngineClosed, Failed, Finished, Job, log
from dglm.server.logprobs import MAX_LOGPROBS, TokenLogprob, openai_logprobs
from dglm.server.metrics import Metered, ServerMetrics

SETTINGS = declared_settings()
PUBLIC_PATHS = {"/health", "/"}  # the page is static and holds no data; it sends the key with every API call
DOCS_PATHS = ("/docs", "/openapi.json")  # public only when the operator says so (--public-docs)


@dataclass
class ServerLimits:
    """What one request may ask for, and how requests are batched (the `dglm serve` flags)."""

    max_batch_size: int = 32
    max_wait_ms: float = 20.0
    max_n: int = 16
    max_tokens: int = 256
    max_body_kb: int = 64
    request_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
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


class ApiError(Exception):
    """An answer in OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers

    def response(self) -> JSONResponse:
        error = {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}
        return JSONResponse({"error": error}, status_code=self.status, headers=self.headers)


# ---- request models ------------------------------------------------------------------------
class AttributeTarget(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str = Field(description="attribute name, as listed by GET /v1/attributes")
    label: str = Field(description="the label to steer toward")
    weight: float = Field(1.0, description="strength; a negative weight steers away from the label")


class PhraseTarget(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    text: str = Field(description="a phrase whose meaning to steer toward (no labelled data needed)")
    weight: float = Field(1.0, description="strength; a negative weight steers away from the phrase")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = False


SCHEMA_BOUNDS = {"at_least": "minimum", "above": "exclusiveMinimum", "at_most": "maximum", "below": "exclusiveMaximum"}


def _setting_fields() -> dict[str, Any]:
    """One optional request field per declared generation setting; OpenAI's name (`alias`) is accepted too. The
    ranges go into the OpenAPI schema; the values are checked by the declarations themselves, whose messages say
    what is accepted."""
    fields = {}
    for name, (_, spec, kind) in SETTINGS.items():
        alias = spec.metadata["alias"]
        choices = AliasChoices(alias, name) if alias else None
        bounds = {key: spec.metadata[ours] for ours, key in SCHEMA_BOUNDS.items() if spec.metadata[ours] is not None}
        fields[name] = (kind | None, Field(None, validation_alias=choices, json_schema_extra=bounds or None,
                                           description=f"{spec.metadata['help']} ({accepted(spec, kind)})"))
    return fields


# OpenAI completion fields that dglm does not implement: accepted at their defaults (clients such as LangChain's
# wrapper send them with every request), refused with "not supported" when they ask for something else.
UNSUPPORTED_AT_DEFAULT: dict[str, tuple[Any, ...]] = {
    "best_of": (None, 1), "suffix": (None, ""),
}


def is_default(value: Any, default: Any) -> bool:
    """Equal, without JSON's false passing for 0 (or 0.0 failing for 0)."""
    if default is None or isinstance(default, bool) or isinstance(value, bool):
        return value is default
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float)) and value == default
    return type(value) is type(default) and value == default


def refuse_unsupported(completion: Any) -> None:
    for name, defaults in UNSUPPORTED_AT_DEFAULT.items():
        value = getattr(completion, name)
        if not any(is_default(value, default) for default in defaults):
            shown = " or ".join(repr(d) for d in defaults if d is not None)
            raise ApiError(400, f"{name}={value!r} is not supported by dglm; leave it out, or send null or {shown}",
                           param=name, code="unsupported_parameter")


CompletionRequest = create_model(
    "CompletionRequest",
    __config__=ConfigDict(extra="forbid", strict=True),
    model=(str | None, Field(None, description="the served model's name (GET /v1/models); may be left out")),
    prompt=(str | list[str], Field(description="text to continue, or a list of texts")),
    n=(int, Field(1, description="continuations per prompt")),
    seed=(int | None, Field(None, description="base seed: choice i uses seed + i, and reports it")),
    stream=(bool, Field(False, description="send text as it is decoded, as server-sent events")),
    stream_options=(StreamOptions | None, None),
    attributes=(list[AttributeTarget | PhraseTarget | str],
                Field([], description='targets: {"name", "label", "weight"} objects, {"text", "weight"} phrases or '
                                      '"NAME=LABEL[:WEIGHT]" strings')),
    return_scores=(bool, Field(False, description="add each installed probe's label probabilities for each choice")),
    echo=(bool | None, Field(None, description="put each choice's prompt before its text")),
    stop=(str | list[str] | None, Field(None, description="up to 4 strings: a choice ends before the first it writes "
                                                          "(finish_reason 'stop'), streamed or not")),
    logprobs=(int | None, Field(None, ge=0, le=MAX_LOGPROBS, description="report each token's log-probability and this "
                                "many likeliest alternatives, from the decoder's distribution before truncation, "
                                "penalties and bias")),
    logit_bias=(dict[str, float] | None, Field(None, description="{token id: bias in [-100, 100]} added to the "
                                                                 "decoder's logits (-100 bans a token, 100 forces it)")),
    user=(str | None, Field(None, description="accepted for OpenAI compatibility, not used")),
    **{name: (Any, Field(None, description="not supported: accepted only at its default"))
       for name in UNSUPPORTED_AT_DEFAULT},
    **_setting_fields(),
)


def validation_message(error: ValidationError) -> tuple[str, str | None]:
    """One readable sentence (and the field it is about) from pydantic's first error."""
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"] if not str(part).startswith(("str", "list[", "AttributeTarget", "PhraseTarget")))
    field = where.split(".")[0] or None
    if first["type"] == "extra_forbidden":
        twin = next((name if where == alias else alias for name, (_, spec, _) in SETTINGS.items()
                     if (alias := spec.metadata["alias"]) and where in (name, alias)), None)
        if twin is not None:
            return f"{twin} and {where} are one setting under two names; send only one of them", field
        known = sorted({f.validation_alias.choices[0] if f.validation_alias else name
                        for name, f in CompletionRequest.model_fields.items()} | {name for name in SETTINGS})
        return f"unknown field {where!r}; accepted fields: {', '.join(known)}", field
    if first["type"] == "missing":
        return f"field {where!r} is required", field
    if field == "prompt":
        return "prompt must be a string or a list of strings (token-id prompts are not supported)", field
    return f"field {where!r}: {first['msg']} (got {first.get('input')!r})", field


def model_settings(pipeline: Pipeline) -> dict[str, dict[str, Any]]:
    """Each generation setting by its request field: this checkpoint's default, what it accepts and its bounds, from
    the same declarations as the request model, so that a client (the playground) hard-codes none of them."""
    diffusion, decoding = pipeline.settings()
    defaults = {**dataclasses.asdict(diffusion), **dataclasses.asdict(decoding)}
    described = {}
    for name, (_, spec, kind) in SETTINGS.items():
        bounds = {key: spec.metadata[key] for key in SCHEMA_BOUNDS if spec.metadata[key] is not None}
        described[spec.metadata["alias"] or name] = {"default": defaults[name], "type": kind.__name__,
                                                     "accepts": accepted(spec, kind), "help": spec.metadata["help"], **bounds}
    return described


# ---- the app -------------------------------------------------------------------------------
class Guard:
    """ASGI middleware: the API key (every path but the public ones) and refusing new requests while draining."""

    def __init__(self, app, api_key: str | None, state: dict[str, bool], public_docs: bool = False):
        self.app, self.api_key, self.state, self.public_docs = app, api_key, state, public_docs

    def is_public(self, path: str) -> bool:
        return path in PUBLIC_PATHS or self.public_docs and path.startswith(DOCS_PATHS)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] != "/health":
            problem = None
            if self.state["draining"]:
                problem = ApiError(503, "the server is shutting down; send the request again later", kind="server_error")
            elif self.api_key and not self.is_public(scope["path"]):
                sent = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
                if not hmac.compare_digest(sent.encode(), f"Bearer {self.api_key}".encode()):
                    problem = ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer KEY' with "
                                            "the key the server was started with", code="invalid_api_key",
                                       kind="authentication_error", headers={"WWW-Authenticate": 'Bearer realm="dglm"'})
            if problem is not None:
                await problem.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(pipeline: Pipeline, model_name: str | ServedModels = "dglm-default", limits: ServerLimits | None = None,
               api_key: str | None = None, allowed_origins: list[str] = (), public_docs: bool = False) -> FastAPI:
    """The web application; `dglm serve` runs it with uvicorn, tests and applications may run it themselves.
    `app.state.engine` is the batching engine (its `batch_sizes` show how requests were batched). Pages from
    `allowed_origins` may call the API from a browser (CORS; none by default). The API description (/docs, served
    from the swagger-ui-bundle package, nothing fetched from outside, and /openapi.json) needs the key unless
    `public_docs`."""
    limits = limits or ServerLimits()
    served = model_name if isinstance(model_name, ServedModels) else ServedModels(model_name)
    model_name = served.name
    for constraints in served.aliases.values():
        attribute_terms(constraints)  # an alias naming an unknown attribute or label fails at start, not per request
    metrics = ServerMetrics()
    engine = BatchingEngine(pipeline, limits.max_batch_size, limits.max_wait_ms, metrics)
    state = {"draining": False}
    created = int(time.time())

    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await asyncio.to_thread(engine.close, limits.request_timeout_s)

    app = FastAPI(title="dglm", description="Controllable text generation: OpenAI-compatible completions with attributes.",
                  lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.engine, app.state.drain = engine, state
    app.add_middleware(Guard, api_key=api_key, state=state, public_docs=public_docs)
    app.mount("/docs/assets", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-assets")
    app.add_middleware(Metered, metrics=metrics)  # outside the Guard: refused requests are counted too
    if allowed_origins:  # added last, so outermost: a browser's preflight carries no key and must not meet the Guard
        app.add_middleware(CORSMiddleware, allow_origins=list(allowed_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return error.response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        message = {404: f"no endpoint {request.method} {request.url.path}; the API is POST /v1/completions, "
                        "GET /v1/models, GET /v1/attributes, GET /health (docs at /docs)",
                   405: f"{request.method} is not accepted by {request.url.path}"}.get(error.status_code, str(error.detail))
        return ApiError(error.status_code, message, code="not_found" if error.status_code == 404 else None).response()

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unexpected error answering %s %s", request.method, request.url.path)
        return ApiError(500, "internal error: the server could not answer this request; its log says why",
                        kind="server_error").response()

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_name}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def playground() -> HTMLResponse:
        return HTMLResponse((files("dglm.server") / "playground.html").read_text(encoding="utf-8"))

    settings = model_settings(pipeline)
    entries = {name: {"id": name, "object": "model", "created": created, "owned_by": "dglm", "settings": settings,
                      "attributes": [dataclasses.asdict(c) for c in served.presets(name)]}
               for name in [model_name, *served.aliases]}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": list(entries.values())}

    @app.get("/v1/models/{model_id}")
    async def model(model_id: str) -> dict[str, Any]:
        if model_id not in entries:
            raise ApiError(404, f"model {model_id!r} is not served; served: {', '.join(entries)}", param="model",
                           code="model_not_found")
        return entries[model_id]

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="dglm API",
                                   swagger_js_url="/docs/assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs/assets/swagger-ui.css",
                                   swagger_favicon_url="/docs/assets/favicon-32x32.png")

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/attributes")
    async def attributes() -> dict[str, Any]:
        rows = [a.summary() for a in get_attributes().values() if pipeline.probe_fits(a.probe)]
        return {"object": "list", "data": rows}

    @app.post("/v1/chat/completions", include_in_schema=False)
    async def chat() -> None:
        raise ApiError(400, "dglm continues text and has no chat endpoint: send the text to continue as `prompt` to "
                            "POST /v1/completions", code="unsupported_endpoint")

    @app.post("/v1/completions", openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": CompletionRequest.model_json_schema()}}}})
    async def completions(request: Request) -> Response:
        body = await read_json(request, limits.max_body_kb * 1024)
        try:
            completion = CompletionRequest.model_validate(body)
        except ValidationError as error:
            message, field = validation_message(error)
            raise ApiError(400, message, param=field) from None
        rows = plan_rows(completion, pipeline, served, limits)
        loop, events = asyncio.get_running_loop(), asyncio.Queue()

        def emit(event) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the event loop has stopped (shutdown)
                pass

        job = Job(rows, emit, stream=completion.stream, scores=completion.return_scores, stop=request_stops(completion.stop),
                  logprobs=completion.logprobs)
        try:
            engine.submit(job)
        except EngineClosed as error:
            raise ApiError(503, str(error), kind="server_error") from None
        reply = Reply(job, events, completion.model or model_name, time.monotonic() + limits.request_timeout_s,
                      limits.request_timeout_s, echo=bool(completion.echo))
        if completion.stream:
            include_usage = bool(completion.stream_options and completion.stream_options.include_usage)
            return StreamingResponse(reply.stream(include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return JSONResponse(await reply.collect(request))

    return app


MAX_JSON_DEPTH = 16  # a completion request nests three deep ({"attributes": [{...}]}); deeper is not a request
JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*(?:"|\\?\Z)', re.DOTALL)  # an unclosed string runs to the end, once
JSON_BRACKET = re.compile(rb"[][{}]")


async def read_json(request: Request, limit: int) -> Any:
    """The request body as JSON, refusing bodies over `limit` bytes before reading them whole, nesting deeper than
    `MAX_JSON_DEPTH` before parsing, numbers JSON cannot hold (NaN, Infinity, 1e999) while parsing, and text that is
    not valid Unicode (a lone surrogate such as "\\ud800", which no tokenizer takes) after it, naming the field."""
    too_big = ApiError(413, f"request body is larger than the server's limit of {limit // 1024} KiB (--max-body-kb)")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_big
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_big
    if json_depth(body) > MAX_JSON_DEPTH:
        raise ApiError(400, f"request body nests deeper than {MAX_JSON_DEPTH} levels; a completion request is a JSON "
                            "object a few levels deep")
    try:
        parsed = json.loads(body, parse_constant=refuse_constant, parse_float=finite_float)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as error:
        raise ApiError(400, f"request body is not valid JSON ({error}); send a JSON object such as "
                            '{"prompt": "The movie", "attributes": ["sentiment=positive"]}') from None
    for where, text in json_strings(parsed):
        problem = unicode_problem(text, argument=False)
        if problem:
            raise ApiError(400, f"field {where!r} is not valid text: {problem}; send UTF-8 text",
                           param=where.split(".")[0] or None)
    return parsed


def json_depth(body: bytes) -> int:
    """How deep the arrays and objects of a JSON text nest (brackets inside strings do not count)."""
    depth = deepest = 0
    for bracket in JSON_BRACKET.findall(JSON_STRING.sub(b'""', body)):
        if bracket in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        elif bracket in b"]}":
            depth -= 1
    return deepest


def refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is too large for a number")
    return value


def json_strings(value: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """Every string of a parsed JSON value, keys included, with the dotted path of the field it is in."""
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from json_strings(item, f"{where}.{index}" if where else str(index))
    elif isinstance(value, dict):
        for key, item in value.items():
            inner = f"{where}.{key}" if where else key
            yield inner, key
            yield from json_strings(item, inner)


def plan_rows(completion: Any, pipeline: Pipeline, served: ServedModels, limits: ServerLimits) -> list[Row]:
    """Check a completion request against the model and the server's limits, and turn it into rows: choice
    i * n + j continues prompt i with seed `seed + i * n + j`, as `dglm generate` and `Pipeline.generate` do.
    A model alias's attributes come first, the request's are added to them."""
    refuse_unsupported(completion)
    if completion.echo and completion.logprobs is not None:
        raise ApiError(400, "logprobs with echo (the prompt's log-probabilities) is not supported by dglm; send one of them",
                       param="logprobs", code="unsupported_parameter")
    logit_bias = token_biases(completion.logit_bias or {}, pipeline.decoder.vocab_size)
    presets = served.presets(completion.model)
    prompts = [completion.prompt] if isinstance(completion.prompt, str) else completion.prompt
    count = len(prompts) * completion.n
    if completion.n < 1 or count > limits.max_n:
        raise ApiError(400, f"n must be at least 1 and n times the number of prompts at most {limits.max_n} (--max-n); "
                            f"got n={completion.n} for {len(prompts)} prompt(s)", param="n")
    overrides = {name: getattr(completion, name) for name in SETTINGS}
    if (overrides["max_new_tokens"] or 0) > limits.max_tokens:
        raise ApiError(400, f"max_tokens must be at most {limits.max_tokens} (--max-tokens), got {overrides['max_new_tokens']}",
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
    except DglmError as error:  # an error without a field is about the attributes (resolving them, their probes)
        raise ApiError(400, str(error), param=request_field(error.field) if error.field else "attributes") from None
    return rows


def request_constraint(target: AttributeTarget | PhraseTarget | str) -> Constraint:
    if isinstance(target, str):
        return parse_constraint(target)
    if isinstance(target, PhraseTarget):
        return Constraint.toward(target.text, target.weight)
    return Constraint(target.name, target.label, target.weight)


def token_biases(logit_bias: dict[str, float], vocab_size: int) -> dict[int, float]:
    """OpenAI's `logit_bias` ({token id as a string: bias}) checked and keyed by token id."""
    biases = {}
    for key, value in logit_bias.items():
        digits = key.strip()
        if not (digits.isascii() and digits.isdigit() and len(digits) <= 12 and int(digits) < vocab_size):
            raise ApiError(400, f"logit_bias keys must be token ids from 0 to {vocab_size - 1}, got {key!r}", param="logit_bias")
        if not (math.isfinite(value) and -100 <= value <= 100):
            raise ApiError(400, f"logit_bias values must be numbers in [-100, 100], got {value!r} for token {key}",
                           param="logit_bias")
        biases[int(digits)] = value
    return biases


def request_stops(stop: str | list[str] | None) -> list[str]:
    """The request's stop strings as a list, checked as `Pipeline.generate` checks them, with OpenAI's limit of 4."""
    try:
        return stop_strings(stop, most=4)
    except DglmError as error:
        raise ApiError(400, str(error), param="stop") from None


def request_field(name: str) -> str:
    """The request field a pipeline input or setting arrives in (OpenAI's name where it has one)."""
    if name in SETTINGS:
        return SETTINGS[name][1].metadata["alias"] or name
    return {"prefix": "prompt", "num_samples": "n"}.get(name, name)


class Reply:
    """Turns a job's events into an OpenAI completion object, or into its stream of chunks."""

    def __init__(self, job: Job, events: asyncio.Queue, model: str, deadline: float, timeout_s: float,
                 echo: bool = False):
        self.job, self.events, self.model, self.deadline, self.timeout_s = job, events, model, deadline, timeout_s
        self.id, self.created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        self.sent = [""] * len(job.rows)
        self.tokens_sent = [0] * len(job.rows)  # logprobs entries streamed, per choice
        self.finished: dict[int, Finished] = {}
        self.unechoed = set(range(len(job.rows))) if echo else set()  # choices whose prompt is still to be sent

    def echoed(self, index: int, text: str) -> str:
        """`text`, after the choice's prompt the first time (OpenAI's `echo`)."""
        if index not in self.unechoed:
            return text
        self.unechoed.discard(index)
        return self.job.rows[index].prefix + text

    def chunk(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                "choices": choices, **extra}

    def choice(self, index: int, text: str, done: Finished | None, tokens: list[TokenLogprob] | None) -> dict[str, Any]:
        choice = {"index": index, "text": text, "logprobs": None if tokens is None else openai_logprobs(tokens),
                  "finish_reason": done.finish_reason if done else None}
        if done is not None:
            choice["seed"] = self.job.rows[index].seed
            if done.scores is not None:
                choice["scores"] = done.scores
        return choice

    def usage(self) -> dict[str, int]:
        completion = sum(done.completion_tokens for done in self.finished.values())
        return {"prompt_tokens": self.job.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.job.prompt_tokens + completion}

    async def next_event(self, wait: float | None = None) -> Delta | Finished | None:
        """The next event, None after `wait` seconds without one; a failure or the deadline raises ApiError."""
        remaining = self.deadline - time.monotonic()
        try:
            event = await asyncio.wait_for(self.events.get(), min(remaining, wait or remaining))
        except asyncio.TimeoutError:
            if time.monotonic() < self.deadline:
                return None
            self.job.cancelled = True
            raise ApiError(504, f"the request took longer than the server's limit of {self.timeout_s:g} s "
                                "(--request-timeout-s); ask for fewer or shorter samples", kind="timeout") from None
        if isinstance(event, Failed):
            raise ApiError(event.status, event.message, kind="invalid_request_error" if event.status < 500 else "server_error")
        return event

    async def collect(self, request: Request) -> dict[str, Any]:
        try:
            while len(self.finished) < len(self.job.rows):
                event = await self.next_event(wait=1.0)
                if event is None and await request.is_disconnected():
                    self.job.cancelled = True
                    return {}
                if isinstance(event, Finished):
                    self.finished[event.index] = event
        except asyncio.CancelledError:
            self.job.cancelled = True
            raise
        choices = [self.choice(i, self.echoed(i, done.text), done, done.logprobs)
                   for i, done in sorted(self.finished.items())]
        return self.chunk(choices, usage=self.usage())

    async def stream(self, include_usage: bool) -> AsyncIterator[str]:
        try:
            while len(self.finished) < len(self.job.rows):
                try:
                    event = await self.next_event()
                except ApiError as error:
                    yield sse(json.loads(error.response().body))
                    return
                if isinstance(event, Delta):
                    self.sent[event.index] += event.text
                    self.tokens_sent[event.index] += len(event.logprobs or [])
                    yield sse(self.chunk([self.choice(event.index, self.echoed(event.index, event.text), None, event.logprobs)]))
                elif isinstance(event, Finished):
                    self.finished[event.index] = event
                    start = len(self.sent[event.index])
                    tokens = None if event.logprobs is None else event.logprobs[self.tokens_sent[event.index]:]
                    yield sse(self.chunk([self.choice(event.index, self.echoed(event.index, event.text[start:]), event, tokens)]))
            if include_usage:
                yield sse(self.chunk([], usage=self.usage()))
            yield "data: [DONE]\n\n"
        finally:
            if len(self.finished) < len(self.job.rows):
                self.job.cancelled = True  # the client went away: its rows leave the batch


def sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

