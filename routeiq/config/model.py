"""The gateway's configuration: LiteLLM-compatible sections plus a ``routeiq:`` section.

Every model is frozen; a reload builds a new ``GatewayConfig``. Cross-field rules are checked
here, so that a config that validates is one the gateway can start with.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    SecretStr,
    field_validator,
    model_validator,
)

from routeiq.config.mcp import McpSettings
from routeiq.config.problems import require_unique

__all__ = [
    "DeploymentConfig",
    "DrainSettings",
    "EventLogSettings",
    "FrozenMapping",
    "GatewayConfig",
    "HookSpec",
    "LeadershipSettings",
    "LimitsSettings",
    "RouteIQSettings",
    "RoutingSettings",
    "ServiceSpec",
    "SupervisorSettings",
    "freeze",
    "thaw",
]


def freeze(value: Any) -> Any:
    """A read-only deep copy: mappings become ``MappingProxyType``, lists become tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """A plain mutable deep copy of a frozen value, for libraries that expect dicts and lists."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value


FrozenMapping = Annotated[Mapping[str, Any], AfterValidator(freeze), PlainSerializer(thaw)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LitellmParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")
    model: str = Field(min_length=1)


class DeploymentConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")
    model_name: str = Field(min_length=1)
    litellm_params: LitellmParams
    model_info: FrozenMapping = Field(default_factory=dict)


class EventLogSettings(_Frozen):
    path: Path | None = None


class DrainSettings(_Frozen):
    delay_s: float = Field(
        default=2.0, ge=0, description="readiness 503 before the listener closes"
    )
    timeout_s: float = Field(
        default=30.0, gt=0, description="how long in-flight requests may finish"
    )


class SupervisorSettings(_Frozen):
    max_restarts: int = Field(default=5, ge=0)
    window_s: float = Field(default=60.0, gt=0)
    backoff_initial_s: float = Field(default=0.1, ge=0)
    backoff_max_s: float = Field(default=5.0, ge=0)

    @model_validator(mode="after")
    def _backoff_order(self) -> SupervisorSettings:
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff_max_s must be >= backoff_initial_s")
        return self


class LeadershipSettings(_Frozen):
    backend: Literal["local", "etcd"] = "local"
    lock_path: Path | None = None
    etcd_endpoints: tuple[str, ...] = ("127.0.0.1:2379",)
    key_prefix: str = "/routeiq"
    lease_ttl_s: float = Field(default=10.0, gt=0)
    renew_deadline_s: float = Field(default=6.0, gt=0)
    retry_period_s: float = Field(default=2.0, gt=0)
    # etcd transport security and auth, used by every etcd client of the gateway (election and
    # config sync). TLS is on when a CA or a client certificate is set; the password should be
    # an ``os.environ/NAME`` reference.
    etcd_ca_cert: Path | None = Field(
        default=None, description="PEM CA bundle that signs etcd's server certificate (TLS)"
    )
    etcd_client_cert: Path | None = Field(
        default=None, description="PEM client certificate for etcd's --client-cert-auth"
    )
    etcd_client_key: Path | None = Field(
        default=None, description="PEM private key of etcd_client_cert"
    )
    etcd_user: str | None = Field(default=None, min_length=1, description="etcd auth user name")
    etcd_password: SecretStr | None = Field(
        default=None, description="etcd auth password (use an os.environ/NAME reference)"
    )

    @model_validator(mode="after")
    def _etcd_credentials(self) -> LeadershipSettings:
        if self.backend != "etcd":
            return self  # unused: the local backend talks to no etcd
        if (self.etcd_client_cert is None) != (self.etcd_client_key is None):
            raise ValueError("etcd_client_cert and etcd_client_key must be set together")
        if (self.etcd_user is None) != (self.etcd_password is None):
            raise ValueError("etcd_user and etcd_password must be set together")
        return self

    @model_validator(mode="after")
    def _timings(self) -> LeadershipSettings:
        # client-go's rule: the lease must outlive the renew deadline, which must outlive a retry.
        if not self.lease_ttl_s > self.renew_deadline_s:
            raise ValueError(
                f"lease_ttl_s ({self.lease_ttl_s}) must be greater than renew_deadline_s "
                f"({self.renew_deadline_s})"
            )
        if not self.renew_deadline_s > self.retry_period_s:
            raise ValueError(
                f"renew_deadline_s ({self.renew_deadline_s}) must be greater than retry_period_s "
                f"({self.retry_period_s})"
            )
        return self


class HookSpec(_Frozen):
    """A startup hook: ``call`` ("module:attr") runs as a component at the end of ``phase``.

    The callable receives a ``HookContext``; it may return an async context manager, which is
    entered and whose exit becomes the hook's undo when the gateway unwinds.
    """

    phase: Literal["configure", "observe", "patch", "serve"]
    call: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
    name: str | None = None

    @property
    def component(self) -> str:
        return f"hook:{self.name or self.call.rsplit(':', 1)[1]}"


class ServiceSpec(_Frozen):
    """A supervised background service: ``call`` is ``async def run(ctx, *, task_status)``."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,62}$")
    call: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
    restart: Literal["permanent", "transient", "temporary"] = "permanent"


class LimitsSettings(_Frozen):
    """Bounds on the work one request may ask for, checked before any work (see
    ``routeiq.proxy.limits``)."""

    max_body_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    body_timeout_s: float = Field(
        default=30.0, gt=0, description="time to receive a whole request body, else 408"
    )
    max_json_depth: int = Field(default=32, ge=2, le=512)
    max_n: int = Field(default=16, ge=1, description="n and best_of")
    max_output_tokens: int = Field(
        default=262_144, ge=1, description="max_tokens and max_completion_tokens"
    )
    max_logprobs: int = Field(default=20, ge=0, description="top_logprobs and (legacy) logprobs")
    max_input_items: int = Field(
        default=2048, ge=1, description="items in an embeddings input or completions prompt"
    )
    max_inflight: int = Field(
        default=512, ge=1, description="requests in progress per process; more are shed (503)"
    )
    retry_after_s: int = Field(default=1, ge=0, description="Retry-After of a shed request")


class RoutingSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    strategy: str | None = None
    options: FrozenMapping = Field(default_factory=dict)


class MetricsSettings(_Frozen):
    multiproc_dir: Path | None = None


class RouteIQSettings(_Frozen):
    master_key: SecretStr | None = None
    admin_key: SecretStr | None = None
    # Grants read access to /_lifecycle*, /metrics (the admin key does too); without it those
    # stay open but redacted.
    read_key: SecretStr | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    event_log: EventLogSettings = EventLogSettings()
    drain: DrainSettings = DrainSettings()
    supervisor: SupervisorSettings = SupervisorSettings()
    leadership: LeadershipSettings = LeadershipSettings()
    limits: LimitsSettings = LimitsSettings()
    # Forward OpenAI-compatible deployments' traffic directly after the Router's pick (see
    # routeiq.proxy.passthrough); off = every request goes through Router.acompletion.
    passthrough: bool = True
    routing: RoutingSettings = RoutingSettings()
    metrics: MetricsSettings = MetricsSettings()
    hooks: tuple[HookSpec, ...] = ()
    services: tuple[ServiceSpec, ...] = ()
    mcp: McpSettings = McpSettings()

    @field_validator("services")
    @classmethod
    def _unique_services(cls, services: tuple[ServiceSpec, ...]) -> tuple[ServiceSpec, ...]:
        require_unique("service", (s.name for s in services))
        return services


class GatewayConfig(BaseModel):
    """A fully validated, frozen gateway configuration."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    model_list: tuple[DeploymentConfig, ...] = Field(min_length=1)
    router_settings: FrozenMapping = Field(default_factory=dict)
    litellm_settings: FrozenMapping = Field(default_factory=dict)
    general_settings: FrozenMapping = Field(default_factory=dict)
    environment_variables: dict[str, str] = Field(default_factory=dict, repr=False)
    routeiq: RouteIQSettings = RouteIQSettings()
    # Where the config came from, and the secret values it holds (for redaction); not YAML keys.
    source: str = Field(default="<embedded default>", exclude=True)
    secrets: frozenset[str] = Field(default_factory=frozenset, exclude=True, repr=False)
    digest: str = Field(default="", exclude=True, description="sha256 of the source text")
    # LiteLLM keys RouteIQ ignores, as (path, reason and what to use instead); not YAML keys.
    warnings: tuple[tuple[str, str], ...] = Field(default=(), exclude=True)

    @property
    def model_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(d.model_name for d in self.model_list))

    @property
    def master_key(self) -> str | None:
        key = self.routeiq.master_key
        return None if key is None else key.get_secret_value()

    @property
    def admin_key(self) -> str | None:
        key = self.routeiq.admin_key
        return None if key is None else key.get_secret_value()
