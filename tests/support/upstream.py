"""A real OpenAI-compatible HTTP server on loopback, for tests and benchmarks.

It speaks enough of the OpenAI wire format for the official client and litellm:
``POST /v1/chat/completions`` (JSON and SSE streaming, with a usage chunk when
``stream_options.include_usage`` is set), ``POST /v1/completions``, ``POST /v1/embeddings`` and
``GET /v1/models``. Every response says which server answered (``system_fingerprint`` is
``"<name>:<port>"`` and the ``x-upstream`` header is ``<name>``), so a test can tell which
deployment a router picked.

Behaviour is chosen per request by directives in the requested model name, joined with ``+``
(``"slow-0.2s+gpt"``), or by the ``x-upstream-fault`` / ``x-upstream-delay`` headers:

- ``fail-<status>`` answers with an OpenAI error body and that status (``fail-429`` adds
  ``retry-after: 0``);
- ``slow-<n>s`` / ``slow-<n>ms`` waits before answering;
- ``drop`` closes the connection half-way through the response;
- ``hang`` (streaming) sends one chunk, then waits until the client goes away; (otherwise)
  waits until the client goes away before answering anything;
- ``usage-<kind>`` answers a bad ``usage`` (JSON body, or the usage chunk of a stream with
  ``include_usage``): ``negative`` (-5), ``string`` ("abc"), ``huge`` (``1e400``), ``object``,
  ``nan`` (``NaN``);
- ``invalid-json`` answers 200 with ``{not json``; ``html`` answers 200 with an HTML page (as
  ``text/event-stream`` on a stream request).

The server counts requests and streams: ``statistics().streams_aborted`` counts streams whose
client disconnected before the end, which is how a test proves a cancelled gateway request
cancelled its upstream request. Use it in-process with ``async with running_upstream() as up``,
or as a process: ``python -m tests.support.upstream --port 0`` prints its base URL when ready;
``GET /_upstream/stats`` and ``POST /_upstream/reset`` serve the counters over HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import re
import signal
import socket
import struct
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

__all__ = ["Directives", "RecordedRequest", "Upstream", "UpstreamStats", "running_upstream"]

_SLOW = re.compile(r"^slow-(\d+(?:\.\d+)?)(ms|s)$")
_FAIL = re.compile(r"^fail-(\d{3})$")
_USAGE = re.compile(r"^usage-(negative|string|huge|object|nan)$")
_BAD_USAGE: dict[str, str] = {
    "negative": "-5",
    "string": '"abc"',
    "huge": "1e400",
    "object": '{"tokens": 3}',
    "nan": "NaN",
}
_HUGE = "__bad_usage_value__"
HTML_PAGE = b"<!DOCTYPE html><html><body><h1>502 Bad Gateway</h1></body></html>\n"


@dataclass(frozen=True, slots=True)
class Directives:
    """What one request asked the server to do, parsed from its model name and headers."""

    delay: float = 0.0
    fail_status: int | None = None
    drop: bool = False
    hang: bool = False
    bad_usage: str | None = None
    bad_body: str | None = None

    @classmethod
    def parse(cls, model: str, headers: Mapping[str, str]) -> Directives:
        tokens = [t for t in model.split("+") if t]
        tokens += [t.strip() for t in headers.get("x-upstream-fault", "").split("+") if t.strip()]
        delay, fail, drop, hang = 0.0, None, False, False
        bad_usage: str | None = None
        bad_body: str | None = None
        for token in tokens:
            if m := _SLOW.match(token):
                delay += float(m[1]) / (1000.0 if m[2] == "ms" else 1.0)
            elif m := _FAIL.match(token):
                fail = int(m[1])
            elif token == "drop":
                drop = True
            elif token == "hang":
                hang = True
            elif m := _USAGE.match(token):
                bad_usage = m[1]
            elif token in ("invalid-json", "html"):
                bad_body = token
        if header_delay := headers.get("x-upstream-delay"):
            delay += float(header_delay)
        return cls(
            delay=delay,
            fail_status=fail,
            drop=drop,
            hang=hang,
            bad_usage=bad_usage,
            bad_body=bad_body,
        )


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    method: str
    path: str
    model: str | None
    stream: bool
    headers: Mapping[str, str]
    body: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class UpstreamStats:
    requests: int = 0
    in_flight: int = 0
    failures_injected: int = 0
    streams_started: int = 0
    streams_completed: int = 0
    streams_aborted: int = 0
    connections_dropped: int = 0


@dataclass
class Upstream:
    """A running server. ``base_url`` ends in ``/v1``, as the OpenAI client expects."""

    name: str
    host: str
    port: int
    delay: float = 0.0
    chunk_delay: float = 0.0
    stream_chunks: int = 3
    embedding_dims: int = 8
    models: tuple[str, ...] = ("gpt-test",)
    api_key: str | None = None
    requests: list[RecordedRequest] = field(default_factory=list)
    _stats: dict[str, int] = field(default_factory=lambda: dict(asdict(UpstreamStats())))
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _closing: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def identity(self) -> str:
        return f"{self.name}:{self.port}"

    def statistics(self) -> UpstreamStats:
        return UpstreamStats(**self._stats)

    def reset(self) -> None:
        self.requests.clear()
        in_flight = self._stats["in_flight"]
        self._stats = dict(asdict(UpstreamStats(in_flight=in_flight)))

    async def wait_for(self, predicate: Callable[[UpstreamStats], bool]) -> UpstreamStats:
        """Wait until ``predicate(statistics())`` holds; bound it with the caller's timeout."""
        async with self._changed:
            await self._changed.wait_for(lambda: predicate(self.statistics()))
            return self.statistics()

    async def wait_streams_aborted(self, count: int = 1) -> UpstreamStats:
        return await self.wait_for(lambda s: s.streams_aborted >= count)

    async def _bump(self, name: str, by: int = 1) -> None:
        self._stats[name] += by
        async with self._changed:
            self._changed.notify_all()

    # -- HTTP -------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._accounting])
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/_upstream/stats", self._stats_route)
        app.router.add_post("/_upstream/reset", self._reset_route)
        return app

    @web.middleware
    async def _accounting(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/_upstream/"):
            return await handler(request)
        await self._bump("requests")
        await self._bump("in_flight")
        try:
            if self.api_key is not None and request.headers.get("authorization") != (
                f"Bearer {self.api_key}"
            ):
                return _error(401, "invalid_api_key", "Incorrect API key provided.")
            return await handler(request)
        finally:
            self._stats["in_flight"] -= 1
            async with self._changed:
                self._changed.notify_all()

    async def _read(self, request: web.Request) -> tuple[dict[str, Any], Directives]:
        body = await request.json() if request.can_read_body else {}
        model = str(body.get("model", ""))
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.requests.append(
            RecordedRequest(
                request.method, request.path, model or None, bool(body.get("stream")), headers, body
            )
        )
        directives = Directives.parse(model, headers)
        delay = self.delay + directives.delay
        if delay > 0:
            await asyncio.sleep(delay)
        return body, directives

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body, directives = await self._read(request)
        if failed := await self._maybe_fail(directives):
            return failed
        prompt = " ".join(_text_of(m.get("content")) for m in body.get("messages") or ())
        reply = f"[{self.name}] {prompt}".strip()
        if body.get("stream"):
            return await self._stream(request, body, directives, reply, chat=True)
        payload = self._envelope("chat.completion", body)
        payload["choices"] = [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ]
        payload["usage"] = _usage(prompt, reply)
        return await self._respond(request, payload, directives)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body, directives = await self._read(request)
        if failed := await self._maybe_fail(directives):
            return failed
        prompt = body.get("prompt", "")
        # A prompt may be text, texts, tokens or lists of tokens (OpenAI accepts all four).
        prompt = " ".join(map(str, prompt)) if isinstance(prompt, list) else str(prompt)
        reply = f"[{self.name}] {prompt}".strip()
        if body.get("stream"):
            return await self._stream(request, body, directives, reply, chat=False)
        payload = self._envelope("text_completion", body)
        payload["choices"] = [
            {"index": 0, "text": reply, "finish_reason": "stop", "logprobs": None}
        ]
        payload["usage"] = _usage(prompt, reply)
        return await self._respond(request, payload, directives)

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        body, directives = await self._read(request)
        if failed := await self._maybe_fail(directives):
            return failed
        inputs = body.get("input", "")
        inputs = inputs if isinstance(inputs, list) else [inputs]
        data = []
        for index, item in enumerate(inputs):
            vector = _vector(str(item), self.embedding_dims)
            embedding: Any = vector
            if body.get("encoding_format") == "base64":
                embedding = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        tokens = sum(len(str(i).split()) for i in inputs)
        payload = {
            "object": "list",
            "model": body.get("model", ""),
            "data": data,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return await self._respond(request, payload, directives)

    async def _models(self, request: web.Request) -> web.StreamResponse:
        await self._read(request)
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": self.name} for m in self.models
        ]
        return web.json_response({"object": "list", "data": data}, headers=self._headers())

    async def _stats_route(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(asdict(self.statistics()))

    async def _reset_route(self, request: web.Request) -> web.StreamResponse:
        self.reset()
        return web.json_response(asdict(self.statistics()))

    # -- responses --------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        return {"x-upstream": self.name, "x-upstream-port": str(self.port)}

    def _envelope(self, kind: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "id": f"{'chatcmpl' if kind.startswith('chat') else 'cmpl'}-{time.monotonic_ns():x}",
            "object": kind,
            "created": int(time.time()),
            "model": body.get("model", ""),
            "system_fingerprint": self.identity,
        }

    async def _maybe_fail(self, directives: Directives) -> web.Response | None:
        if directives.fail_status is None:
            return None
        await self._bump("failures_injected")
        status = directives.fail_status
        response = _error(status, "injected_fault", f"injected fault: status {status}")
        response.headers.update(self._headers())
        if status == 429:
            response.headers["retry-after"] = "0"
        return response

    async def _respond(
        self, request: web.Request, payload: Mapping[str, Any], directives: Directives
    ) -> web.StreamResponse:
        if directives.hang:
            await self._closing.wait()
            raise asyncio.CancelledError
        if directives.bad_body == "invalid-json":
            return web.Response(
                body=b"{not json", content_type="application/json", headers=self._headers()
            )
        if directives.bad_body == "html":
            return web.Response(body=HTML_PAGE, content_type="text/html", headers=self._headers())
        data = _dumps(payload, directives)
        if not directives.drop:
            return web.Response(body=data, content_type="application/json", headers=self._headers())
        response = web.StreamResponse(headers=self._headers())
        response.content_type = "application/json"
        response.content_length = len(data)
        await response.prepare(request)
        await response.write(data[: len(data) // 2])
        return await self._drop(request, response)

    async def _drop(self, request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
        await self._bump("connections_dropped")
        if request.transport is not None:
            request.transport.close()
        # The handler must not return normally, or aiohttp would try to finish the response.
        raise asyncio.CancelledError

    async def _stream(
        self,
        request: web.Request,
        body: Mapping[str, Any],
        directives: Directives,
        reply: str,
        *,
        chat: bool,
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                **self._headers(),
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
            }
        )
        await response.prepare(request)
        await self._bump("streams_started")
        if directives.bad_body is not None:
            await response.write(HTML_PAGE if directives.bad_body == "html" else b"{not json")
            await response.write_eof()
            await self._bump("streams_completed")
            return response
        envelope = self._envelope("chat.completion.chunk" if chat else "text_completion", body)
        pieces = _split(reply, self.stream_chunks)
        try:
            for index, piece in enumerate(pieces):
                if chat:
                    delta: dict[str, Any] = {"content": piece}
                    if index == 0:
                        delta["role"] = "assistant"
                    choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": None}
                else:
                    choice = {"index": 0, "text": piece, "finish_reason": None, "logprobs": None}
                await _send(response, {**envelope, "choices": [choice]})
                if directives.drop:
                    return await self._drop(request, response)
                if directives.hang:
                    await self._closing.wait()
                    raise asyncio.CancelledError
                if self.chunk_delay > 0:
                    await asyncio.sleep(self.chunk_delay)
            last: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
            if chat:
                last["delta"] = {}
            else:
                last.update(text="", logprobs=None)
            await _send(response, {**envelope, "choices": [last]})
            if (body.get("stream_options") or {}).get("include_usage"):
                prompt = " ".join(_text_of(m.get("content")) for m in body.get("messages") or ())
                usage_chunk = {**envelope, "choices": [], "usage": _usage(prompt, reply)}
                await response.write(b"data: " + _dumps(usage_chunk, directives) + b"\n\n")
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except (asyncio.CancelledError, ConnectionResetError):
            if not self._closing.is_set() and not directives.drop:
                await _shielded(self._bump("streams_aborted"))
            raise
        await self._bump("streams_completed")
        return response


async def _shielded(coro: Any) -> None:
    # Counting must survive the cancellation that caused it.
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.shield(coro)


def _dumps(payload: Mapping[str, Any], directives: Directives) -> bytes:
    """``payload`` as JSON, its ``usage`` replaced by the bad value a directive asked for."""
    if directives.bad_usage is None or "usage" not in payload:
        return json.dumps(payload).encode()
    bad = {**payload, "usage": {**payload["usage"], "prompt_tokens": _HUGE}}
    bad["usage"]["completion_tokens"] = _HUGE
    text = json.dumps(bad).replace(f'"{_HUGE}"', _BAD_USAGE[directives.bad_usage])
    return text.encode()


async def _send(response: web.StreamResponse, payload: Mapping[str, Any]) -> None:
    await response.write(b"data: " + json.dumps(payload).encode() + b"\n\n")


def _error(status: int, code: str, message: str) -> web.Response:
    kind = {401: "authentication_error", 429: "rate_limit_error"}.get(status, "api_error")
    if 400 <= status < 500 and status not in (401, 429):
        kind = "invalid_request_error"
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return web.json_response(body, status=status)


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _usage(prompt: str, reply: str) -> dict[str, int]:
    p, c = len(prompt.split()), len(reply.split())
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _split(text: str, parts: int) -> list[str]:
    parts = max(1, parts)
    size = max(1, -(-len(text) // parts))
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def _vector(text: str, dims: int) -> list[float]:
    digest = hashlib.blake2b(text.encode(), digest_size=max(dims, 1)).digest()
    return [round(b / 255.0, 6) for b in digest[:dims]]


def _listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


@contextlib.asynccontextmanager
async def running_upstream(
    *, name: str = "upstream", host: str = "127.0.0.1", port: int = 0, **options: Any
) -> AsyncIterator[Upstream]:
    """Start a server on ``host`` (a free port unless ``port`` is given); stop it on exit.

    ``options`` set the ``Upstream`` fields: ``delay``, ``chunk_delay``, ``stream_chunks``,
    ``embedding_dims``, ``models``, ``api_key``; ``delay`` and ``chunk_delay`` may be changed
    while it runs.
    """
    sock = _listen(host, port)
    upstream = Upstream(name=name, host=host, port=int(sock.getsockname()[1]), **options)
    runner = web.AppRunner(
        upstream.app(), handler_cancellation=True, shutdown_timeout=0.5, access_log=None
    )
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        yield upstream
    finally:
        upstream._closing.set()
        await runner.cleanup()
        sock.close()


async def _serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    options = {"delay": args.delay, "chunk_delay": args.chunk_delay}
    async with running_upstream(name=args.name, host=args.host, port=args.port, **options) as up:
        print(up.base_url, flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="An OpenAI-compatible test upstream.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--name", default="upstream")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between chunks")
    asyncio.run(_serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main(sys.argv[1:])
