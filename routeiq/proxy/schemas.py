"""Pydantic models of the OpenAI request bodies the gateway accepts, and their validation.

Guarantees: ``validate_request`` checks a parsed JSON body against the shape of its route once,
before any upstream work, on both call paths; a wrong type is an ``ApiError`` 400 whose
``param`` names the field the way OpenAI does (``messages[0].content``). Validation is strict
(no coercion: ``"5"`` is not an integer, ``1`` is not a boolean), as a JSON API should be. The
body the gateway forwards stays the client's own dict: the models only judge it, so a field
the models do not know in depth (a tool's JSON schema, a provider's extra message field) is
passed on untouched. Fields the gateway does not forward at all are refused before validation
by the route (``unrecognized request argument``), so the top-level models forbid extras.

The same models describe the request bodies in ``/openapi.json``.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.json_schema import models_json_schema

from routeiq.proxy.errors import ApiError

__all__ = [
    "MIN_CLIENT_TIMEOUT_S",
    "REQUEST_MODELS",
    "ChatCompletionRequest",
    "CompletionRequest",
    "EmbeddingRequest",
    "openapi_schemas",
    "validate_request",
]

JsonObject = dict[str, Any]
Stop = str | list[str] | None
Tokens = list[int]


class _Part(BaseModel):
    """Any nested OpenAI object: typed where the gateway cares, other fields kept as sent."""

    model_config = ConfigDict(strict=True, extra="allow")


class ContentPart(_Part):
    type: str


class FunctionDefinition(_Part):
    name: str
    description: str | None = None
    parameters: JsonObject | None = None


class Tool(_Part):
    type: str
    function: FunctionDefinition | None = None


class Message(_Part):
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[JsonObject] | None = None
    tool_call_id: str | None = None


class StreamOptions(_Part):
    include_usage: bool | None = None


class ResponseFormat(_Part):
    type: str
    json_schema: JsonObject | None = None


MIN_CLIENT_TIMEOUT_S = 1.0


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    model: str = Field(min_length=1)
    user: str | None = None
    metadata: JsonObject | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    n: int | None = None
    seed: int | None = None
    # A client may shorten the operator's deadline, not below what any upstream call can meet:
    # a smaller one is the client's mistake (400), not an upstream timeout (504).
    timeout: float | None = Field(default=None, ge=MIN_CLIENT_TIMEOUT_S)


class ChatCompletionRequest(_Request):
    messages: list[Message] = Field(min_length=1)
    temperature: float | None = None
    top_p: float | None = None
    stop: Stop = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: str | JsonObject | None = None
    parallel_tool_calls: bool | None = None
    functions: list[FunctionDefinition] | None = None
    function_call: str | JsonObject | None = None
    reasoning_effort: str | None = None
    modalities: list[str] | None = None
    audio: JsonObject | None = None
    prediction: JsonObject | None = None
    store: bool | None = None
    service_tier: str | None = None
    web_search_options: JsonObject | None = None


class CompletionRequest(_Request):
    prompt: str | list[str] | Tokens | list[Tokens] = Field(min_length=1)
    temperature: float | None = None
    top_p: float | None = None
    stop: Stop = None
    max_tokens: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: int | None = None
    echo: bool | None = None
    best_of: int | None = None
    suffix: str | None = None


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    model: str = Field(min_length=1)
    input: str | list[str] | Tokens | list[Tokens] = Field(min_length=1)
    user: str | None = None
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(default=None, gt=0)


REQUEST_MODELS = (ChatCompletionRequest, CompletionRequest, EmbeddingRequest)


def validate_request(model: type[BaseModel], body: dict[str, Any]) -> None:
    """Raise a 400 ``ApiError`` naming the first invalid field of ``body``, if any."""
    try:
        model.model_validate(body)
    except ValidationError as exc:
        raise _as_api_error(exc) from None


def _as_api_error(exc: ValidationError) -> ApiError:
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    # A union reports one error per member; the deepest names the field most precisely
    # (``prompt[2]`` rather than ``prompt``). Ties keep pydantic's order: fields as declared.
    first = max(errors, key=lambda e: _param(e["loc"]).count("[") + _param(e["loc"]).count("."))
    param = _param(first["loc"])
    if first["type"] == "missing":
        return ApiError(400, f"'{param}' is required", param=param, code="invalid_type")
    reasons = dict.fromkeys(
        _INSTANCE_OF.sub("", e["msg"]) for e in errors if _param(e["loc"]) == param
    )
    message = f"invalid value for '{param}': {'; or '.join(reasons)}"
    return ApiError(400, message, param=param, code="invalid_type")


_INSTANCE_OF = re.compile(r" or instance of \w+")


def _param(loc: tuple[int | str, ...]) -> str:
    """``("messages", 0, "content", "str")`` → ``"messages[0].content"`` (union tags dropped)."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif _is_union_tag(part):
            continue
        else:
            path += f".{part}" if path else part
    return path


def _is_union_tag(part: str) -> bool:
    # pydantic names a union member by its type: "str", "list[str]", "ContentPart",
    # "literal['float','base64']", "function-after[...]"; the models' field names are snake_case.
    return (
        part in {"str", "int", "float", "bool", "dict", "list", "none"}
        or "[" in part
        or part[:1].isupper()
    )


def openapi_schemas() -> dict[str, Any]:
    """The request models (and the objects they nest) as OpenAPI component schemas."""
    _, top = models_json_schema(
        [(model, "validation") for model in REQUEST_MODELS],
        ref_template="#/components/schemas/{model}",
    )
    schemas: dict[str, Any] = top.get("$defs", {})
    return schemas
