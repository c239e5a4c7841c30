"""The fast path: the Router picks the deployment, RouteIQ forwards the bytes.

Measured here: ``Router.acompletion`` spends ~3.6 ms of CPU per call, of which deployment
selection is ~0.25 ms; a plain aiohttp POST is ~0.24 ms. So for deployments that already speak
OpenAI's wire format (``openai/…`` or ``hosted_vllm/…`` with an ``api_base``, and no litellm-only
parameters), the gateway picks a deployment the way this instance's Router would (routing
strategy, cooldowns and RouteIQ's strategies all apply; ``routeiq.routing.picker`` for plain
model groups, the Router's own ``select`` otherwise) and forwards the request over a pooled
aiohttp session, relaying the upstream's JSON or SSE bytes as they come.

Anything else goes through ``Router.acompletion``. One request's attempts share one budget
(``routeiq.proxy.calls``): a failed fast attempt counts, and litellm only gets the attempts that
are left. ``forward`` makes exactly one attempt and says how it failed (``AttemptFailed``): a
connection error, a timeout, a non-200 status, or a 200 whose body is not what was asked for
(not a JSON object, or a stream that does not start like server-sent events). Once bytes have
been relayed, a failure is reported in-band, as OpenAI does.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from routeiq.config.model import GatewayConfig
from routeiq.errors import UpstreamError
from routeiq.proxy.coarse_timers import deadline

if TYPE_CHECKING:
    import aiohttp

__all__ = [
    "FORWARDABLE_PARAMS",
    "AttemptFailed",
    "Passthrough",
    "Relay",
    "Target",
    "passthrough_applies",
    "request_timeout_s",
    "stream_usage",
]

OPENAI_PROVIDERS = frozenset({"openai", "hosted_vllm"})
# Deployment parameters the fast path understands; any other one (rpm/tpm limits, retries of
# litellm's client, extra headers, mock options…) needs litellm's own call path.
FORWARDABLE_PARAMS = frozenset({"model", "api_base", "api_key", "organization", "timeout"})
# Request fields that are RouteIQ's or litellm's business, not the upstream's.
NOT_FORWARDED = frozenset({"metadata", "timeout", "drop_params", "num_retries"})
# How many deployments' targets ``Passthrough.target_of`` keeps.
_REMEMBERED_TARGETS = 4096
# The request body as the upstream gets it (``json.dumps(..., separators=...)`` would build an
# encoder per call).
_COMPACT = json.JSONEncoder(separators=(",", ":"))


class AttemptFailed(UpstreamError):
    """One upstream attempt failed before anything was relayed to the client.

    ``status`` is the upstream's HTTP status (``None`` for a connection error or timeout);
    ``retryable`` is false for a client error (4xx other than 408/429) and an invalid body.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        timed_out: bool = False,
        invalid_body: bool = False,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message, self.status, self.timed_out = message, status, timed_out
        self.invalid_body, self.code = invalid_body, code

    @property
    def status_code(self) -> int:
        """The status litellm's failure bookkeeping (cooldowns) reads: 408 for a timeout,
        500 for a connection error."""
        if self.status is not None:
            return self.status
        return 408 if self.timed_out else 500

    @property
    def retryable(self) -> bool:
        if self.invalid_body:
            return False
        status = self.status
        return status is None or status in (408, 429) or status >= 500


@dataclass(frozen=True, slots=True)
class Target:
    base_url: str
    model: str
    headers: Mapping[str, str]
    timeout_s: float | None
    deployment_id: str


@dataclass(slots=True)
class Relay:
    """A successful upstream response: its status, JSON body or an open byte stream."""

    status: int
    content_type: str
    body: bytes | None
    chunks: AsyncIterator[bytes] | None
    usage: Mapping[str, Any] | None


def passthrough_applies(config: GatewayConfig, *, callback_free: bool) -> bool:
    """Whether requests may take the fast path: enabled, and a strategy that needs no
    litellm success callbacks (see ``routeiq.routing.litellm_setup.BuiltRouter``)."""
    return config.routeiq.passthrough and callback_free


def request_timeout_s(config: GatewayConfig) -> float:
    for value in (
        config.router_settings.get("timeout"),
        config.litellm_settings.get("request_timeout"),
    ):
        if isinstance(value, (int, float)) and value > 0:
            return float(value)
    return 600.0


class Passthrough:
    """Owns one pooled aiohttp session for this app instance."""

    def __init__(self, session: aiohttp.ClientSession, *, default_timeout_s: float) -> None:
        import aiohttp

        self._session = session
        self._default_timeout_s = default_timeout_s
        # id(deployment) -> (deployment, its target): see ``target_of``.
        self._targets: dict[int, tuple[Mapping[str, Any], Target | None]] = {}
        # No timer of aiohttp's own: the attempt's deadline bounds a whole non-streamed answer.
        self._deadline_only = aiohttp.ClientTimeout(total=None)

    @classmethod
    def create(cls, *, default_timeout_s: float) -> Passthrough:
        import aiohttp

        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30, enable_cleanup_closed=True)
        return cls(aiohttp.ClientSession(connector=connector), default_timeout_s=default_timeout_s)

    async def close(self) -> None:
        await self._session.close()

    @staticmethod
    def target(deployment: Mapping[str, Any]) -> Target | None:
        params = deployment.get("litellm_params") or {}
        provider, _, model = str(params.get("model", "")).partition("/")
        api_base = params.get("api_base")
        if provider not in OPENAI_PROVIDERS or not model or not isinstance(api_base, str):
            return None
        # litellm fills in its own flags with falsy defaults; any set one needs litellm.
        if any(params[k] for k in set(params) - FORWARDABLE_PARAMS):
            return None
        headers = {"content-type": "application/json"}
        if params.get("api_key"):
            headers["authorization"] = f"Bearer {params['api_key']}"
        if params.get("organization"):
            headers["openai-organization"] = str(params["organization"])
        timeout = params.get("timeout")
        info = deployment.get("model_info") or {}
        return Target(
            base_url=api_base.rstrip("/"),
            model=model,
            headers=headers,
            timeout_s=float(timeout) if isinstance(timeout, (int, float)) else None,
            deployment_id=str(info.get("id", "")),
        )

    def target_of(self, deployment: Mapping[str, Any]) -> Target | None:
        """``target(deployment)`` for a deployment that is never changed once built (the
        picker's), remembered while that very object is picked again."""
        cached = self._targets.get(id(deployment))
        if cached is not None and cached[0] is deployment:
            return cached[1]
        if len(self._targets) >= _REMEMBERED_TARGETS:
            self._targets.clear()  # deployments of Routers that were replaced
        target = self.target(deployment)
        self._targets[id(deployment)] = (deployment, target)
        return target

    async def forward(
        self,
        target: Target,
        path: str,
        body: Mapping[str, Any],
        *,
        timeout_s: float,
        within_deadline: bool = False,
    ) -> Relay:
        """POST ``body`` to the target, once; raises ``AttemptFailed`` when nothing usable came
        back. ``timeout_s`` bounds the attempt up to the response (the body, unless streaming).

        ``within_deadline``: the caller's own deadline already ends the attempt at ``timeout_s``
        (``routeiq.proxy.calls``), and its timeout is the request's; only a deployment's shorter
        ``timeout`` is then timed here, as a failed attempt. That saves a timer per request.
        """
        import aiohttp

        payload = {k: v for k, v in body.items() if k not in NOT_FORWARDED}
        payload["model"] = target.model
        timed = not within_deadline
        if target.timeout_s is not None and target.timeout_s < timeout_s:
            timeout_s, timed = target.timeout_s, True
        stream = bool(payload.get("stream"))
        # The deadline covers the response's start (and the whole body, unless streaming); a
        # stream may then take as long as it takes, each read within ``timeout_s``.
        timeout = (
            aiohttp.ClientTimeout(total=None, sock_connect=timeout_s, sock_read=timeout_s)
            if stream
            else self._deadline_only
        )
        url = f"{target.base_url}{path}"
        try:
            with deadline(timeout_s if timed else None):
                response = await self._session.post(
                    url,
                    data=_COMPACT.encode(payload).encode(),
                    headers=target.headers,
                    timeout=timeout,
                )
                try:
                    if response.status != 200:
                        raise _status_failure(response.status, await response.read())
                    if stream:
                        first = await _first_event(response)
                    else:
                        raw = await response.read()
                except BaseException:
                    response.close()
                    raise
        except TimeoutError:
            raise AttemptFailed(
                f"no answer within {timeout_s:g}s", timed_out=True, code="upstream_timeout"
            ) from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            # ValueError: UnicodeError from an api_base host IDNA cannot encode, bad URLs.
            reason = type(exc).__name__
            raise AttemptFailed(f"the upstream could not be reached: {reason}") from None
        content_type = response.headers.get("content-type", "application/json")
        if stream:
            return Relay(200, "text/event-stream", None, _relay_stream(response, first), None)
        response.release()
        return Relay(200, content_type, raw, None, _checked_body(raw, content_type))


def _status_failure(status: int, raw: bytes) -> AttemptFailed:
    message, code = f"the upstream answered HTTP {status}", None
    try:
        error = json.loads(raw).get("error")
    except (ValueError, AttributeError, RecursionError):
        error = None
    if isinstance(error, Mapping):
        if isinstance(error.get("message"), str):
            message = error["message"][:500]
        if isinstance(error.get("code"), str):
            code = error["code"][:100]
    return AttemptFailed(message, status=status, code=code)


def _checked_body(raw: bytes, content_type: str) -> Mapping[str, Any] | None:
    """The ``usage`` of a JSON object body; ``AttemptFailed`` when the body is not one."""
    try:
        parsed = json.loads(raw)
    except (ValueError, RecursionError):
        parsed = None
    if not isinstance(parsed, dict):
        raise AttemptFailed(
            f"the upstream answered 200 with a body that is not a JSON object ({content_type})",
            invalid_body=True,
            code="upstream_invalid_response",
        )
    usage = parsed.get("usage")
    return usage if isinstance(usage, Mapping) else None


_SSE_FIELDS = (b"data:", b"event:", b"id:", b"retry:", b":")


async def _first_event(response: aiohttp.ClientResponse) -> bytes:
    """Bytes up to the stream's first line; ``AttemptFailed`` unless it is server-sent events."""
    head = b""
    while b"\n" not in head.lstrip(b"\r\n") and len(head) < 65536:
        chunk = await response.content.readany()
        if not chunk:
            break
        head += chunk
    line = head.lstrip(b"\r\n\xef\xbb\xbf").split(b"\n", 1)[0]
    if not head or not line.startswith(_SSE_FIELDS):
        raise AttemptFailed(
            "the upstream answered a stream request with a body that is not server-sent events"
            f" ({response.headers.get('content-type', 'no content-type')})",
            invalid_body=True,
            code="upstream_invalid_response",
        )
    return head


async def _relay_stream(response: aiohttp.ClientResponse, first: bytes) -> AsyncIterator[bytes]:
    """The upstream's SSE bytes as they arrive; closing this closes the upstream connection."""
    import aiohttp

    try:
        yield first
        async for chunk in response.content.iter_any():
            yield chunk
    except (aiohttp.ClientError, TimeoutError) as exc:
        message = f"the upstream stream failed: {type(exc).__name__}"
        error = {
            "error": {
                "message": message,
                "type": "upstream_error",
                "param": None,
                "code": "upstream_error",
            }
        }
        yield b"data: " + json.dumps(error).encode() + b"\n\ndata: [DONE]\n\n"
    finally:
        # Closing (not releasing) drops the connection, which cancels the upstream's generation.
        response.close()


def stream_usage(chunk: bytes) -> Mapping[str, Any] | None:
    """The ``usage`` object of an SSE chunk that carries one (the last, with include_usage)."""
    if b'"usage"' not in chunk:
        return None
    for line in chunk.split(b"\n"):
        if line.startswith(b"data: {") and b'"usage"' in line:
            try:
                usage = json.loads(line[6:]).get("usage")
            except ValueError:
                continue
            if isinstance(usage, Mapping):
                return usage
    return None
