"""The fast path: the Router picks the deployment, RouteIQ forwards the bytes.

Measured here: ``Router.acompletion`` spends ~3.6 ms of CPU per call, of which deployment
selection is ~0.25 ms; a plain aiohttp POST is ~0.24 ms. So for deployments that already speak
OpenAI's wire format (``openai/…`` or ``hosted_vllm/…`` with an ``api_base``, and no litellm-only
parameters), the gateway asks this instance's Router to pick a deployment (routing strategy,
cooldowns and RouteIQ's strategies all apply) and forwards the request over a pooled aiohttp
session, relaying the upstream's JSON or SSE bytes as they come.

Anything else goes through ``Router.acompletion``. So does every request whose fast attempt
fails before a byte reached the client (connection error, timeout, non-200 status): litellm's
own retries, fallbacks, cooldowns and error mapping then decide the outcome, exactly as without
the fast path. Once bytes have been relayed, a failure is reported in-band, as OpenAI does.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from routeiq.config.model import GatewayConfig

if TYPE_CHECKING:
    import aiohttp

__all__ = [
    "FORWARDABLE_PARAMS",
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
        self._session = session
        self._default_timeout_s = default_timeout_s

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

    async def forward(self, target: Target, path: str, body: Mapping[str, Any]) -> Relay | None:
        """POST ``body`` to the target; ``None`` when it failed before anything was relayed."""
        import aiohttp

        payload = {k: v for k, v in body.items() if k not in NOT_FORWARDED}
        payload["model"] = target.model
        timeout = aiohttp.ClientTimeout(total=target.timeout_s or self._default_timeout_s)
        try:
            response = await self._session.post(
                f"{target.base_url}{path}",
                data=json.dumps(payload, separators=(",", ":")),
                headers=target.headers,
                timeout=timeout,
            )
        except (aiohttp.ClientError, TimeoutError):
            return None
        content_type = response.headers.get("content-type", "application/json")
        if response.status != 200:
            response.release()
            return None
        if not payload.get("stream"):
            try:
                raw = await response.read()
            except (aiohttp.ClientError, TimeoutError):
                return None
            finally:
                response.release()
            return Relay(200, content_type, raw, None, _usage_of(raw))
        return Relay(200, content_type, None, _relay_stream(response), None)


async def _relay_stream(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The upstream's SSE bytes as they arrive; closing this closes the upstream connection."""
    import aiohttp

    try:
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


def _usage_of(raw: bytes) -> Mapping[str, Any] | None:
    try:
        usage = json.loads(raw).get("usage")
    except (ValueError, AttributeError):
        return None
    return usage if isinstance(usage, Mapping) else None


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
