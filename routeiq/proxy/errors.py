"""OpenAI-style error bodies, and the mapping from upstream (litellm) failures to statuses.

A client's mistake is a 4xx naming what to fix; an upstream's failure is a 502 (or 504 on a
timeout, 429 when it rate-limits). No traceback or credential ever reaches a body: upstream
messages are scrubbed of the configured secrets before they are sent, and of litellm's
exception class names (``litellm.InternalServerError: …``, ``OpenAIException - …``): a message
never names litellm, the library is an implementation detail.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from starlette.responses import JSONResponse

if TYPE_CHECKING:
    from routeiq.proxy.passthrough import AttemptFailed

__all__ = [
    "ApiError",
    "clean_upstream_message",
    "map_attempt_failure",
    "map_upstream_error",
    "openai_error_body",
    "openai_error_response",
]

_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}


class ApiError(Exception):
    """A request's failure as the client sees it (a plain exception: tracebacks attach to it)."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def response(self) -> JSONResponse:
        return openai_error_response(self.status, self.message, param=self.param, code=self.code)


def openai_error_body(
    status: int, message: str, *, param: str | None = None, code: str | None = None
) -> dict[str, object]:
    error_type = _TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def openai_error_response(
    status: int, message: str, *, param: str | None = None, code: str | None = None
) -> JSONResponse:
    headers = {"www-authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(openai_error_body(status, message, param=param, code=code), status, headers)


def map_upstream_error(exc: BaseException, redact: Callable[[str], str]) -> ApiError:
    """The ``ApiError`` a client sees for an exception raised by the Router."""
    name = type(exc).__name__
    status = getattr(exc, "status_code", None)
    message = redact(clean_upstream_message(_first_line(exc), status))
    if "Timeout" in name or status == 408:
        return ApiError(504, f"the upstream model timed out: {message}", code="upstream_timeout")
    if status == 429 or "RateLimit" in name:
        return ApiError(
            429, f"the upstream is rate limiting: {message}", code="rate_limit_exceeded"
        )
    if isinstance(status, int) and status in (400, 422) and "ContextWindow" not in name:
        return ApiError(400, message, code="invalid_request")
    if status == 413:
        return ApiError(413, message, code="request_too_large")
    if "ContextWindow" in name:
        return ApiError(400, message, code="context_length_exceeded")
    if status in (401, 403):
        return ApiError(
            502, "the upstream rejected the gateway's credentials", code="upstream_auth"
        )
    return ApiError(502, f"the upstream model failed: {message}", code="upstream_error")


def map_attempt_failure(failure: AttemptFailed, redact: Callable[[str], str]) -> ApiError:
    """The ``ApiError`` a client sees for the fast path's last failed attempt."""
    message = redact(failure.message)
    status = failure.status
    if failure.timed_out or status == 408:
        return ApiError(504, f"the upstream model timed out: {message}", code="upstream_timeout")
    if failure.invalid_body:
        return ApiError(502, message, code="upstream_invalid_response")
    if status == 429:
        return ApiError(
            429, f"the upstream is rate limiting: {message}", code="rate_limit_exceeded"
        )
    if status in (400, 422):
        return ApiError(400, message, code=failure.code or "invalid_request")
    if status == 413:
        return ApiError(413, message, code=failure.code or "request_too_large")
    if status in (401, 403):
        return ApiError(
            502, "the upstream rejected the gateway's credentials", code="upstream_auth"
        )
    return ApiError(502, f"the upstream model failed: {message}", code="upstream_error")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line[:500]


# "litellm.BadRequestError: ", "BadRequestError: ", "OpenAIException - ", "litellm.Timeout: "…
_CLASS_PREFIX = re.compile(
    r"^\s*(?:(?:litellm\.)?(?:\w+\.)*\w*(?:Error|Exception|Timeout)\s*(?::|-)\s*)+", re.IGNORECASE
)
_CLASS_INFIX = re.compile(r"\b(?:litellm\.)?\w*(?:Error|Exception)\s+-\s+", re.IGNORECASE)
# The openai SDK's prefix, which litellm's text completion and embeddings keep.
_SDK_PREFIX = re.compile(r"^Error code: \d{3} - ")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def clean_upstream_message(message: str, status: object = None) -> str:
    """``message`` without litellm's exception class names; a sentence that still names
    litellm (a hint like ``set litellm.drop_params=True``) is dropped."""
    text = _CLASS_INFIX.sub("", _CLASS_PREFIX.sub("", message)).strip()
    text = _SDK_PREFIX.sub("", text)
    if "litellm" in text.lower():
        kept = [s for s in _SENTENCE.split(text) if "litellm" not in s.lower()]
        text = " ".join(kept).strip()
    if not text:
        return f"status {status}" if isinstance(status, int) else "no details"
    return text
