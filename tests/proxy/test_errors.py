"""Upstream failures as clients see them: litellm's exception class names never reach a body."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest

from routeiq.proxy.errors import clean_upstream_message, map_upstream_error
from routeiq.proxy.streaming import litellm_sse
from routeiq.routing.litellm_setup import import_litellm

SECRET = "sk-secret-upstream-key"


def redact(text: str) -> str:
    return text.replace(SECRET, "***")


def litellm_error(status: int, message: str) -> Exception:
    litellm = import_litellm()  # tamed: no network fetch of the cost map
    cls: Any = {
        400: litellm.BadRequestError,
        401: litellm.AuthenticationError,
        404: litellm.NotFoundError,
        429: litellm.RateLimitError,
        500: litellm.InternalServerError,
        503: litellm.ServiceUnavailableError,
    }[status]
    error: Exception = cls(message=message, llm_provider="openai", model="gpt")
    return error


@pytest.mark.parametrize(
    ("status", "expected_status"),
    [(400, 400), (401, 502), (404, 502), (429, 429), (500, 502), (503, 502)],
)
def test_litellm_errors_map_to_clean_redacted_messages(status: int, expected_status: int) -> None:
    exc = litellm_error(status, f"OpenAIException - injected fault ({SECRET}): status {status}")
    assert str(exc).startswith("litellm.")  # what litellm itself says
    error = map_upstream_error(exc, redact)
    assert error.status == expected_status
    assert "litellm" not in error.message.lower() and "Exception" not in error.message
    assert SECRET not in error.message
    if status not in (401,):  # the credentials' failure has its own fixed message
        assert f"injected fault (***): status {status}" in error.message


def test_timeouts_and_connection_errors_are_clean() -> None:
    litellm = import_litellm()
    timeout = litellm.Timeout(message="Connection timed out.", model="gpt", llm_provider="openai")
    error = map_upstream_error(timeout, redact)
    assert (error.status, error.message) == (
        504,
        "the upstream model timed out: Connection timed out.",
    )
    connection = litellm.APIConnectionError(
        message="OpenAIException - Connection error.", model="gpt", llm_provider="openai"
    )
    error = map_upstream_error(connection, redact)
    assert error.message == "the upstream model failed: Connection error."


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("litellm.NotFoundError: NotFoundError: OpenAIException - gone", "gone"),
        ("litellm.Timeout: timed out", "timed out"),
        ("litellm.InternalServerError: Error code: 503 - overloaded", "overloaded"),
        (
            "litellm.UnsupportedParamsError: openai does not support parameters: ['x']. "
            "To drop these, set `litellm.drop_params=True`.",
            "openai does not support parameters: ['x'].",
        ),
        ("litellm.InternalServerError: ", "status 500"),
        ("LiteLLM Retried: 2 times", "status 500"),
        ("the model is overloaded", "the model is overloaded"),
    ],
)
def test_clean_upstream_message(raw: str, clean: str) -> None:
    assert clean_upstream_message(raw, 500) == clean


def test_an_in_band_stream_error_names_no_litellm() -> None:
    class Broken:
        """A litellm stream that fails once iterated (the headers are already sent)."""

        closed = False

        def __aiter__(self) -> Broken:
            return self

        async def __anext__(self) -> Any:
            raise litellm_error(500, f"OpenAIException - broke mid-stream {SECRET}")

        async def aclose(self) -> None:
            self.closed = True

    stream = Broken()

    async def relay() -> list[bytes]:
        return [frame async for frame in litellm_sse(stream, redact, lambda usage: None)]

    frames = anyio.run(relay)
    assert stream.closed
    assert frames[-1] == b"data: [DONE]\n\n"
    error = json.loads(frames[0].removeprefix(b"data: "))["error"]
    assert error["message"] == "the upstream model failed: broke mid-stream ***"
    assert b"litellm" not in b"".join(frames).lower()
