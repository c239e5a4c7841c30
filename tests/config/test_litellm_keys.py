"""Every key of LiteLLM's proxy config is classified, checked against the installed litellm,
and the table in docs/migrating-from-litellm.md is the one the code applies."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from routeiq.config import litellm_keys
from routeiq.config.litellm_keys import (
    GENERAL_FAMILIES,
    GENERAL_SETTINGS,
    LITELLM_SETTINGS,
    ROUTER_SETTINGS,
    classify,
)
from routeiq.config.loader import parse_config
from routeiq.config.reference import (
    KEY_TABLE_BEGIN,
    KEY_TABLE_END,
    MIGRATION_PATH,
    render_key_table,
)
from routeiq.routing.litellm_setup import import_litellm

REPO = Path(__file__).resolve().parents[2]
MODEL = {"model_name": "m", "litellm_params": {"model": "openai/m"}}


def router_parameters() -> set[str]:
    litellm = import_litellm()
    return {p for p in inspect.signature(litellm.Router.__init__).parameters if p != "self"}


def test_every_router_parameter_is_classified_and_no_other_key() -> None:
    params = router_parameters()
    assert sorted(params - set(ROUTER_SETTINGS)) == [], "new litellm.Router parameters"
    assert sorted(set(ROUTER_SETTINGS) - params) == [], "table keys litellm.Router lacks"


def test_every_general_setting_of_litellm_is_classified_explicitly() -> None:
    from litellm.proxy._types import ConfigGeneralSettings

    unclassified = [
        key
        for key in ConfigGeneralSettings.model_fields
        if key not in GENERAL_SETTINGS
        and not any(key.startswith(prefix) for prefix, _ in GENERAL_FAMILIES)
    ]
    assert unclassified == []


def test_every_rule_says_why_and_ignored_ones_mostly_say_what_instead() -> None:
    rules = [*ROUTER_SETTINGS.values(), *LITELLM_SETTINGS.values(), *GENERAL_SETTINGS.values()]
    rules += [rule for _, rule in GENERAL_FAMILIES]
    assert all(rule.reason for rule in rules)
    ignored = [r for r in rules if r.status == "ignored"]
    with_instead = [r for r in ignored if r.instead]
    assert len(with_instead) / len(ignored) > 0.6


def test_unknown_keys_per_section() -> None:
    assert classify("router_settings", "redis_hots") is None  # litellm would refuse it
    assert classify("litellm_settings", "some_new_global").status == "ignored"  # type: ignore[union-attr]
    assert classify("general_settings", "made_up").status == "ignored"  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="not a LiteLLM settings section"):
        classify("model_list", "x")


def test_applied_keys_reach_the_config_and_ignored_ones_do_not() -> None:
    config = parse_config(
        {
            "model_list": [MODEL],
            "router_settings": {"num_retries": 2, "redis_host": "r", "cache_responses": True},
            "litellm_settings": {"drop_params": True, "callbacks": ["prometheus"]},
            "general_settings": {"master_key": "sk-master-abcdef", "alerting": ["slack"]},
        },
        {},
        source="t",
    )
    assert dict(config.router_settings) == {"num_retries": 2}
    assert dict(config.litellm_settings) == {"drop_params": True}
    assert dict(config.general_settings) == {}
    assert config.master_key == "sk-master-abcdef"
    assert [path for path, _ in config.warnings] == [
        "router_settings.cache_responses",
        "router_settings.redis_host",
        "litellm_settings.callbacks",
        "general_settings.alerting",
    ]


def test_callback_hints_name_what_to_use_instead() -> None:
    hint = litellm_keys.callback_hint(["prometheus", "otel", "langfuse"])
    assert hint.split("; ") == [
        "prometheus -> GET /metrics serves RouteIQ's Prometheus metrics",
        "otel -> set OTEL_EXPORTER_OTLP_ENDPOINT (RouteIQ exports GenAI spans)",
        "langfuse -> export OTel spans or write a hook",
    ]


def test_the_migration_guide_holds_the_current_table() -> None:
    text = (REPO / MIGRATION_PATH).read_text()
    start = text.index(KEY_TABLE_BEGIN)
    end = text.index(KEY_TABLE_END) + len(KEY_TABLE_END) + 1
    assert text[start:end] == render_key_table(), (
        f"{MIGRATION_PATH} is stale: replace the generated part with the output of "
        "`routeiq config litellm-keys`"
    )
