"""What RouteIQ does with each key of a LiteLLM proxy config: the table, as data.

Every key is one of: ``applied`` (same meaning as in LiteLLM), ``differently`` (honoured, in
RouteIQ's way, said in ``how``) or ``ignored`` (not supported: the config still loads, with one
warning per key naming the reason and what to use instead; ``routeiq check --strict`` makes
them errors). ``model_list`` entries' ``litellm_params`` and ``model_info`` are passed to
litellm's Router unchanged (applied); ``environment_variables`` feed only ``os.environ/NAME``
references.

Keys are looked up exactly, then by family (a prefix such as ``database_``); a key that is in no
LiteLLM schema is an error in ``router_settings`` (litellm's Router would refuse it) and a
warning elsewhere. ``tests/config/test_litellm_keys.py`` checks the table against the installed
litellm (its ``Router.__init__`` parameters and ``ConfigGeneralSettings`` fields).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "GENERAL_FAMILIES",
    "GENERAL_SETTINGS",
    "LITELLM_SETTINGS",
    "ROUTER_SETTINGS",
    "SECTIONS",
    "KeyRule",
    "callback_hint",
    "classify",
    "describe_ignored",
]

Status = Literal["applied", "differently", "ignored"]


@dataclass(frozen=True, slots=True)
class KeyRule:
    status: Status
    reason: str
    instead: str = ""

    def message(self) -> str:
        if self.status == "applied":
            return f"applied: {self.reason}"
        if self.status == "differently":
            return f"applied differently: {self.reason}"
        tail = f"; instead: {self.instead}" if self.instead else ""
        return f"not supported, ignored: {self.reason}{tail}"


def _applied(reason: str = "passed to litellm.Router") -> KeyRule:
    return KeyRule("applied", reason)


def _ignored(reason: str, instead: str = "") -> KeyRule:
    return KeyRule("ignored", reason, instead)


_REDIS = _ignored(
    "router state (cooldowns, usage counters, parallel-request counts) is kept per worker "
    "process, never in Redis",
    "divide rpm/tpm limits by the number of workers; cluster coordination is "
    "routeiq.leadership (backend: etcd)",
)
_CACHE = _ignored(
    "RouteIQ has no response cache",
    "put a caching proxy in front, or call the provider's prompt caching",
)
_SCHEDULER = _ignored("no request scheduler or priority queue", "routeiq.limits and replicas")
_EXTRA_ROUTING = _ignored(
    "litellm routing feature not wired into RouteIQ's per-instance Router",
    "routeiq.routing (strategies, weighted-ab arms)",
)
_BUDGET = _ignored(
    "no budgets or spend tracking",
    "watch gateway_* token metrics and alert on them",
)

ROUTER_SETTINGS: dict[str, KeyRule] = {
    **{
        key: _applied()
        for key in (
            "routing_strategy",
            "routing_strategy_args",
            "num_retries",
            "retry_after",
            "timeout",
            "stream_timeout",
            "fallbacks",
            "context_window_fallbacks",
            "content_policy_fallbacks",
            "default_fallbacks",
            "allowed_fails",
            "allowed_fails_policy",
            "cooldown_time",
            "disable_cooldowns",
            "retry_policy",
            "model_group_alias",
            "enable_pre_call_checks",
            "default_max_parallel_requests",
            "max_fallbacks",
        )
    },
    **{
        key: _REDIS
        for key in ("redis_url", "redis_host", "redis_port", "redis_password", "redis_db")
    },
    **{key: _CACHE for key in ("cache_responses", "cache_kwargs", "caching_groups")},
    "model_list": _ignored("the deployments belong at the top level", "a top-level model_list"),
    "assistants_config": _ignored("no Assistants API", "call the provider directly"),
    "search_tools": _ignored("no search-tools API", "call the search provider directly"),
    "guardrail_list": _ignored(
        "no guardrails", "a routeiq.hooks hook, or a guardrail service in front"
    ),
    "client_ttl": _ignored(
        "RouteIQ's Router keeps litellm's default client cache", "nothing: clients are pooled"
    ),
    "polling_interval": _ignored("no Assistants/batch polling", ""),
    "default_priority": _SCHEDULER,
    "default_litellm_params": _ignored(
        "deployment defaults are not merged", "put the parameters on each deployment"
    ),
    "set_verbose": _ignored("litellm's verbose logging stays off", "routeiq.log_level: debug"),
    "debug_level": _ignored("litellm's debug logging stays off", "routeiq.log_level: debug"),
    "enable_tag_filtering": _EXTRA_ROUTING,
    "tag_filtering_match_any": _EXTRA_ROUTING,
    "tag_routing_prefix": _EXTRA_ROUTING,
    "plugins": _ignored(
        "RouteIQ installs its own routing plugin per Router",
        "routeiq.routing strategies or routeiq.hooks",
    ),
    "model_group_retry_policy": _ignored(
        "per-group retry policies are not applied", "router_settings.retry_policy"
    ),
    "fallback_on_unsupported_params": _EXTRA_ROUTING,
    "optional_pre_call_checks": _EXTRA_ROUTING,
    "routing_groups": _EXTRA_ROUTING,
    "provider_budget_config": _BUDGET,
    "alerting_config": _ignored(
        "no Slack/webhook alerting", "the Prometheus alert rules shipped in alerts/"
    ),
    "router_general_settings": _EXTRA_ROUTING,
    "deployment_affinity_ttl_seconds": _EXTRA_ROUTING,
    "model_group_affinity_config": _EXTRA_ROUTING,
    "ignore_invalid_deployments": _ignored(
        "an invalid deployment rejects the whole config", "fix the deployment (routeiq check)"
    ),
    "enable_health_check_routing": _ignored(
        "no background health checks", "cooldowns after failures (allowed_fails, cooldown_time)"
    ),
    "health_check_staleness_threshold": _ignored("no background health checks", ""),
    "health_check_ignore_transient_errors": _ignored("no background health checks", ""),
    "background_health_check_model_groups": _ignored("no background health checks", ""),
    "enable_weighted_failover": _EXTRA_ROUTING,
    "enable_mid_stream_fallback_continuation": _ignored(
        "a stream that failed after its first byte is not continued elsewhere", ""
    ),
    "fallback_access_check": _ignored("no keys or teams to check access against", ""),
    "fallback_budget_check": _BUDGET,
    "auto_router_capability_limit": _EXTRA_ROUTING,
    "session_affinity_repin_on_failover": _EXTRA_ROUTING,
}

_CALLBACKS = _ignored(
    "litellm callbacks are process-wide globals; RouteIQ never sets them",
    "prometheus: GET /metrics; otel: OTEL_* env vars (RouteIQ exports GenAI spans); "
    "others: a routeiq.hooks hook",
)
_GLOBAL = _ignored("RouteIQ never sets litellm's module globals (shared by the process)")

LITELLM_SETTINGS: dict[str, KeyRule] = {
    "drop_params": _applied("applied per call"),
    "num_retries": _applied("applied per call"),
    "request_timeout": _applied("applied per call"),
    **{
        key: _CALLBACKS
        for key in (
            "callbacks",
            "success_callback",
            "failure_callback",
            "service_callback",
            "service_callbacks",
            "langfuse_default_tags",
            "input_callback",
            "_async_success_callback",
            "_async_failure_callback",
            "audit_log_callbacks",
        )
    },
    "cache": _CACHE,
    "cache_params": _CACHE,
    "enable_caching_on_provider_specific_optional_params": _CACHE,
    "modify_params": _ignored(
        "a litellm global that rewrites request messages for some providers",
        "send provider-valid messages (litellm still maps OpenAI parameters per call)",
    ),
    "set_verbose": _ignored("litellm's verbose logging stays off", "routeiq.log_level: debug"),
    "json_logs": KeyRule("differently", "RouteIQ's own logs are one JSON object per line"),
    "turn_off_message_logging": KeyRule("differently", "RouteIQ never logs prompts or completions"),
    "redact_messages_in_exceptions": KeyRule(
        "differently", "errors returned to clients carry no request content"
    ),
    "redact_user_api_key_info": KeyRule(
        "differently", "keys are never logged; known secrets are masked in events"
    ),
    "max_budget": _BUDGET,
    "budget_duration": _BUDGET,
    "default_team_settings": _ignored("no teams", ""),
    "default_key_generate_params": _ignored("no key management", "routeiq.master_key"),
    "upperbound_key_generate_params": _ignored("no key management", "routeiq.master_key"),
    "default_internal_user_params": _ignored("no users", ""),
    "ssl_verify": _GLOBAL,
    "force_ipv4": _GLOBAL,
    "telemetry": KeyRule("differently", "RouteIQ sends no telemetry"),
    "context_window_fallbacks": _ignored(
        "fallbacks are Router settings", "router_settings.context_window_fallbacks"
    ),
    "fallbacks": _ignored("fallbacks are Router settings", "router_settings.fallbacks"),
    "default_fallbacks": _ignored(
        "fallbacks are Router settings", "router_settings.default_fallbacks"
    ),
    "content_policy_fallbacks": _ignored(
        "fallbacks are Router settings", "router_settings.content_policy_fallbacks"
    ),
    "allowed_fails": _ignored("a Router setting", "router_settings.allowed_fails"),
    "cooldown_time": _ignored("a Router setting", "router_settings.cooldown_time"),
    "guardrails": _ignored("no guardrails", "a routeiq.hooks hook, or a guardrail in front"),
    "enable_json_schema_validation": _GLOBAL,
    "disable_end_user_cost_tracking": _BUDGET,
    "return_response_headers": _GLOBAL,
}

_DB = _ignored(
    "RouteIQ keeps no database: keys, teams, users and spend are LiteLLM proxy features",
    "routeiq.master_key for auth, gateway_* metrics for usage",
)
_SPEND_LOGS = _ignored("no spend logs", "gateway_* token metrics and the JSONL event log")
_MCP = _ignored("MCP is not configured through general_settings", "")
_UI = _ignored("no admin UI, users or SSO", "routeiq.admin_key for /_admin")
_FILES = _ignored("no files or batches API", "call the provider directly")
_HEALTH = _ignored(
    "no background health checks of deployments",
    "cooldowns (router_settings.allowed_fails, cooldown_time) and gateway_* metrics",
)
_ALERTING = _ignored("no Slack/webhook alerting", "the Prometheus alert rules shipped in alerts/")
_LIMITS = _ignored(
    "no per-key/global parallel-request limits", "router_settings.default_max_parallel_requests"
)

GENERAL_SETTINGS: dict[str, KeyRule] = {
    "master_key": KeyRule(
        "differently", "used as routeiq.master_key when that is not set (Bearer key for /v1/*)"
    ),
    "store_model_in_db": _DB,
    "otel": _ignored("tracing is always on", "OTEL_* env vars (e.g. OTEL_EXPORTER_OTLP_ENDPOINT)"),
    "custom_auth": _ignored("no custom auth functions", "routeiq.master_key, or a proxy in front"),
    "max_parallel_requests": _LIMITS,
    "global_max_parallel_requests": _LIMITS,
    "max_in_flight_requests_per_worker": _LIMITS,
    "max_queued_requests_per_worker": _SCHEDULER,
    "admission_queue_timeout_seconds": _SCHEDULER,
    "max_request_size_mb": _ignored(
        "the body limit is RouteIQ's own", "routeiq.limits.max_body_bytes"
    ),
    "max_response_size_mb": _ignored("responses are relayed unbounded", ""),
    "proxy_config_reload_interval_seconds": KeyRule(
        "differently", "the config file is watched and hot-reloaded (local) or synced (etcd)"
    ),
    "background_health_checks": _HEALTH,
    "health_check_interval": _HEALTH,
    "health_check_concurrency": _HEALTH,
    "health_check_skip_disabled_background_models": _HEALTH,
    "background_health_check_model_groups": _HEALTH,
    "model_list_healthy_only": _HEALTH,
    "pass_through_endpoints": _ignored("no pass-through endpoints", "route them in your ingress"),
    "pass_through_request_timeout": _ignored("no pass-through endpoints", ""),
    "key_management_system": _ignored(
        "no key management system", "os.environ/NAME references filled by your secret store"
    ),
    "use_google_kms": _ignored("no key management system", "os.environ/NAME references"),
    "use_azure_key_vault": _ignored("no key management system", "os.environ/NAME references"),
    "dangerously_permit_weak_or_unset_master_key": KeyRule(
        "differently", "without a master key the /v1 API is open and a warning event says so"
    ),
    "infer_model_from_keys": _UI,
    "return_wildcard_routes": _ignored("GET /v1/models lists the model_name entries", ""),
    "cancel_on_disconnect": KeyRule(
        "differently", "a client disconnect always cancels the upstream stream"
    ),
    "forward_client_headers_to_llm_api": _ignored("client headers are not forwarded", ""),
    "user_header_name": _UI,
    "user_header_mappings": _UI,
    "plugins": _ignored("no proxy plugins", "routeiq.hooks and routeiq.services"),
    "completion_model": _ignored("the model comes from each request", "model_group_alias"),
    "coordination_redis": _REDIS,
    "control_plane_url": _ignored("no LiteLLM control plane", "routeiq.leadership"),
    "worker_registry": _ignored("no worker registry", "routeiq.leadership"),
    "request_tag_mappings": _EXTRA_ROUTING,
    "fail_closed_rate_limit_enforcement": _LIMITS,
    "include_call_id_in_error_body": _ignored("errors are OpenAI-shaped", ""),
    "enable_claude_code_gateway": _ignored("no Claude Code gateway", ""),
    "claude_code_gateway_managed_settings": _ignored("no Claude Code gateway", ""),
    "claude_code_marketplace_auth_required": _ignored("no Claude Code gateway", ""),
    "allowed_routes": _UI,
    "ui_access_mode": _UI,
    "enable_public_model_hub": _UI,
    "supported_db_objects": _DB,
    "self_serve_budget_policy": _BUDGET,
    "enforce_fallback_model_access": _ignored("no keys or teams to check access against", ""),
    "disable_fallbacks_on_per_model_rate_limits": _EXTRA_ROUTING,
    "scheduled_job_stagger": _DB,
    "spend_capture_rate_check": _SPEND_LOGS,
    "store_prompts_in_spend_logs": _SPEND_LOGS,
    "disable_requester_ip_address_logging": KeyRule(
        "differently", "RouteIQ logs no client addresses"
    ),
    "disable_budget_reservation": _BUDGET,
    "apply_user_budget_to_team_keys": _BUDGET,
    "agent_access_default_deny": _UI,
    "user_url_validation": _UI,
    "user_url_allowed_hosts": _UI,
    "provider_url_destination_allowed_hosts": _ignored(
        "upstream hosts are the deployments' api_base", ""
    ),
    "trusted_proxy_ranges": _ignored("client addresses are not used", ""),
    "skill_scanner": _ignored("no skills API", ""),
    "vector_store_deny_by_default": _ignored("no vector store API", ""),
    "search_tool_deny_by_default": _ignored("no search-tools API", ""),
    "missing_session_id": _ignored("no session tracking", ""),
    "responses_websocket_session_limit_seconds": _ignored("no websocket Responses API", ""),
    "enable_openai_websocket_passthrough": _ignored("no websocket pass-through", ""),
    "vertex_ai_pass_through_drop_anthropic_betas": _ignored("no pass-through endpoints", ""),
    "transcribe_media_buckets": _FILES,
    "allowed_client_side_s3_buckets": _FILES,
    "allowed_client_side_s3_endpoint_urls": _FILES,
    "reject_clientside_metadata_tags": _ignored("request metadata tags are not used", ""),
    "allow_cli_sso_verification_uri_complete": _UI,
    "disable_responses_id_security": _ignored("no Responses API state", ""),
    "allow_unmanaged_response_ids": _ignored("no Responses API state", ""),
    "disable_env_credential_login": _UI,
    "user_mcp_management_mode": _MCP,
    "use_spend_logs_ledger": _SPEND_LOGS,
    "use_spend_logs_partitioning": _SPEND_LOGS,
    "spend_logs_prompt_storage": _SPEND_LOGS,
    "spend_logs_metadata_fields": _SPEND_LOGS,
    "disable_auto_add_proxy_admin_to_teams": _UI,
    "user_api_key_cache_max_size": _DB,
    # Older or undocumented proxy keys seen in real configs.
    "proxy_batch_write_at": _DB,
    "allow_requests_on_db_unavailable": _DB,
    "disable_spend_logs": _SPEND_LOGS,
    "key_management_settings": _ignored(
        "no key management system", "os.environ/NAME references filled by your secret store"
    ),
    "litellm_key_header_name": _ignored(
        "the master key is read from the Authorization: Bearer header", ""
    ),
    "enforce_user_param": _UI,
}

# Families of general_settings keys, by prefix: (prefix, rule).
GENERAL_FAMILIES: tuple[tuple[str, KeyRule], ...] = (
    ("database_", _DB),
    ("maximum_", _SPEND_LOGS),
    ("mcp_", _MCP),
    ("password_policy_", _UI),
    ("max_failed_login", _UI),
    ("failed_login", _UI),
    ("disable_password_login", _UI),
    ("alert", _ALERTING),
    ("max_batch_file", _FILES),
    ("max_file", _FILES),
    ("allowed_file_extensions", _FILES),
    ("blocked_file_extensions", _FILES),
)

SECTIONS = ("router_settings", "litellm_settings", "general_settings")

_NOT_LITELLM = _ignored(
    "not a key RouteIQ knows: general_settings configure LiteLLM's proxy server, which "
    "RouteIQ replaces"
)
_UNKNOWN_GLOBAL = _GLOBAL


def classify(section: str, key: str) -> KeyRule | None:
    """The rule for ``section.key``; ``None`` when the key is in no LiteLLM schema for a
    section where that is an error (``router_settings``)."""
    if section == "router_settings":
        return ROUTER_SETTINGS.get(key)
    if section == "litellm_settings":
        return LITELLM_SETTINGS.get(key, _UNKNOWN_GLOBAL)
    if section == "general_settings":
        rule = GENERAL_SETTINGS.get(key)
        if rule is not None:
            return rule
        for prefix, family in GENERAL_FAMILIES:
            if key.startswith(prefix):
                return family
        return _NOT_LITELLM
    raise ValueError(f"not a LiteLLM settings section: {section}")


_CALLBACK_HINTS = {
    "prometheus": "GET /metrics serves RouteIQ's Prometheus metrics",
    "otel": "set OTEL_EXPORTER_OTLP_ENDPOINT (RouteIQ exports GenAI spans)",
    "opentelemetry": "set OTEL_EXPORTER_OTLP_ENDPOINT (RouteIQ exports GenAI spans)",
    "arize": "send RouteIQ's OTel spans to your collector (OTEL_* env vars)",
    "langfuse_otel": "send RouteIQ's OTel spans to Langfuse's OTLP endpoint (OTEL_* env vars)",
}


def callback_hint(value: Any) -> str:
    """What to use instead of the callbacks named in ``value`` (a name or a list of names)."""
    names = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    hints = []
    for name in names:
        if not isinstance(name, str):
            continue
        hint = _CALLBACK_HINTS.get(name.lower())
        hints.append(
            f"{name} -> {hint}" if hint else f"{name} -> export OTel spans or write a hook"
        )
    return "; ".join(hints)


def describe_ignored(section: str, data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(path, message)`` for each ignored key of ``section`` in ``data``."""
    out: list[tuple[str, str]] = []
    for key in sorted(data, key=str):
        rule = classify(section, str(key))
        if rule is None or rule.status != "ignored":
            continue
        message = rule.message()
        if rule is _CALLBACKS:
            hint = callback_hint(data[key])
            if hint:
                message = f"not supported, ignored: {rule.reason}; instead: {hint}"
        out.append((f"{section}.{key}", message))
    return out
