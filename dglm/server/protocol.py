"""The shapes of `dglm serve`'s API (OpenAI's completions, extended with attributes) and how a request body is read.

Requests are checked by pydantic models, built from the generation settings' declarations, so that a new setting is
a new request field with nothing else to change; errors answer in OpenAI's shape (`ApiError`). The body is read with
limits on size, nesting, numbers and text before any of it reaches the model. Routes are in `dglm.server.routes`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Iterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, create_model

from dglm.config import accepted, declared_settings
from dglm.constraints import Constraint, parse_constraint
from dglm.errors import DglmError
from dglm.inputs import stop_strings, unicode_problem
from dglm.pipeline import Pipeline
from dglm.server.logprobs import MAX_LOGPROBS

SETTINGS = declared_settings()


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
                                                                 "decoder's logits (-100 bans a "
                                                                 "token, 100 forces it)")),
    user=(str | None, Field(None, description="accepted for OpenAI compatibility, not used")),
    **{name: (Any, Field(None, description="not supported: accepted only at its default"))
       for name in UNSUPPORTED_AT_DEFAULT},
    **_setting_fields(),
)


def validation_message(error: ValidationError) -> tuple[str, str | None]:
    """One readable sentence (and the field it is about) from pydantic's first error."""
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"] if not str(part).startswith(("str", "list[", "AttributeTarget",
                                                                                     "PhraseTarget")))
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
                                                     "accepts": accepted(spec, kind), "help": spec.metadata["help"],
                                                     **bounds}
    return described


# ---- reading a body ------------------------------------------------------------------------
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


# ---- from request fields to pipeline inputs -------------------------------------------------
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
            raise ApiError(400, "logit_bias keys must be token ids from 0 to "
                                f"{vocab_size - 1}, got {key!r}", param="logit_bias")
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
