"""The config loader: embedded default, YAML + ``ROUTEIQ_*`` env, secret references, and
validation that reports every problem with its path in one ``ConfigError``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from routeiq.config.loader import ENV_OVERRIDES, embedded_default, load_config, parse_config
from routeiq.config.model import GatewayConfig
from routeiq.errors import ConfigError, GatewayError

MODEL = {"model_name": "m", "litellm_params": {"model": "openai/m"}}


def write_yaml(tmp_path: Path, data: Any, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def problems_of(data: Any, env: dict[str, str] | None = None) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, env or {}, source="test.yaml")
    assert caught.value.source == "test.yaml"
    return list(caught.value.problems)


def attribute_at(config: GatewayConfig, path: tuple[str, ...]) -> Any:
    node: Any = config
    for key in path:
        node = getattr(node, key)
    return node


# --- where the config comes from ---


def test_embedded_default_has_a_mock_model() -> None:
    config = load_config({})
    assert config.source == "<embedded default>"
    assert config.model_names == ("routeiq-mock",)
    params = config.model_list[0].litellm_params
    assert params.model == "openai/routeiq-mock"
    assert params.model_dump()["mock_response"] == "Hello from RouteIQ's embedded default model."
    assert config.secrets == frozenset({"routeiq-mock-key"})
    assert config.master_key is None
    assert config.admin_key is None


def test_embedded_default_is_a_fresh_copy_each_time() -> None:
    first = embedded_default()
    first["model_list"].clear()
    assert [d["model_name"] for d in embedded_default()["model_list"]] == ["routeiq-mock"]


def test_routeiq_config_env_selects_the_yaml(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path,
        {"model_list": [{"model_name": "from-yaml", "litellm_params": {"model": "openai/x"}}]},
    )
    config = load_config({"ROUTEIQ_CONFIG": str(path)})
    assert config.source == str(path)
    assert config.model_names == ("from-yaml",)


def test_explicit_path_wins_over_routeiq_config(tmp_path: Path) -> None:
    chosen = write_yaml(
        tmp_path,
        {"model_list": [{"model_name": "chosen", "litellm_params": {"model": "openai/c"}}]},
    )
    other = write_yaml(
        tmp_path,
        {"model_list": [{"model_name": "other", "litellm_params": {"model": "openai/o"}}]},
        "o.yaml",
    )
    config = load_config({"ROUTEIQ_CONFIG": str(other)}, chosen)
    assert (config.source, config.model_names) == (str(chosen), ("chosen",))


def test_the_loader_reads_only_the_env_it_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROUTEIQ_CONFIG", str(tmp_path / "absent.yaml"))
    monkeypatch.setenv("ROUTEIQ_LOG_LEVEL", "debug")
    monkeypatch.setenv("UPSTREAM_KEY", "from-os-environ")
    assert load_config({}).source == "<embedded default>"
    assert load_config({}).routeiq.log_level == "info"
    data = {
        "model_list": [
            {
                "model_name": "m",
                "litellm_params": {"model": "openai/m", "api_key": "os.environ/UPSTREAM_KEY"},
            }
        ]
    }
    assert problems_of(data) == [
        ("model_list[0].litellm_params.api_key", "environment variable UPSTREAM_KEY is not set")
    ]


# --- ROUTEIQ_* overrides ---

# Every overridable field set in YAML to something other than what the env var says.
YAML_ROUTEIQ = {
    "master_key": "yaml-master",
    "admin_key": "yaml-admin",
    "log_level": "warning",
    "event_log": {"path": "yaml-events.jsonl"},
    "leadership": {
        "backend": "local",
        "lock_path": "yaml.lock",
        "etcd_endpoints": ["yaml:2379"],
        "etcd_ca_cert": "yaml-ca.crt",
        "etcd_client_cert": "yaml-client.crt",
        "etcd_client_key": "yaml-client.key",
        "etcd_user": "yaml-user",
        "etcd_password": "yaml-password",
    },
    "drain": {"delay_s": 3, "timeout_s": 40},
    "metrics": {"multiproc_dir": "yaml-prom"},
}

OVERRIDES: dict[str, tuple[str, Any]] = {
    "ROUTEIQ_MASTER_KEY": ("env-master", "env-master"),
    "ROUTEIQ_ADMIN_KEY": ("env-admin", "env-admin"),
    "ROUTEIQ_LOG_LEVEL": ("debug", "debug"),
    "ROUTEIQ_EVENT_LOG": ("logs/events.jsonl", Path("logs/events.jsonl")),
    "ROUTEIQ_LEADERSHIP_BACKEND": ("etcd", "etcd"),
    "ROUTEIQ_LEADERSHIP_LOCK_PATH": ("run/leader.lock", Path("run/leader.lock")),
    "ROUTEIQ_ETCD_ENDPOINTS": (
        " 10.0.0.1:2379, ,10.0.0.2:2379 ",
        ("10.0.0.1:2379", "10.0.0.2:2379"),
    ),
    "ROUTEIQ_DRAIN_DELAY_S": ("0.5", 0.5),
    "ROUTEIQ_DRAIN_TIMEOUT_S": ("12", 12.0),
    "ROUTEIQ_METRICS_MULTIPROC_DIR": ("prom-multiproc", Path("prom-multiproc")),
    "ROUTEIQ_READ_KEY": ("env-read", "env-read"),
    "ROUTEIQ_ETCD_CA_CERT": ("env-ca.crt", Path("env-ca.crt")),
    "ROUTEIQ_ETCD_CLIENT_CERT": ("env-client.crt", Path("env-client.crt")),
    "ROUTEIQ_ETCD_CLIENT_KEY": ("env-client.key", Path("env-client.key")),
    "ROUTEIQ_ETCD_USER": ("env-user", "env-user"),
    "ROUTEIQ_ETCD_PASSWORD": ("env-password", "env-password"),
}

EXPECTED_PATHS = {
    "ROUTEIQ_MASTER_KEY": ("routeiq", "master_key"),
    "ROUTEIQ_ADMIN_KEY": ("routeiq", "admin_key"),
    "ROUTEIQ_LOG_LEVEL": ("routeiq", "log_level"),
    "ROUTEIQ_EVENT_LOG": ("routeiq", "event_log", "path"),
    "ROUTEIQ_LEADERSHIP_BACKEND": ("routeiq", "leadership", "backend"),
    "ROUTEIQ_LEADERSHIP_LOCK_PATH": ("routeiq", "leadership", "lock_path"),
    "ROUTEIQ_ETCD_ENDPOINTS": ("routeiq", "leadership", "etcd_endpoints"),
    "ROUTEIQ_DRAIN_DELAY_S": ("routeiq", "drain", "delay_s"),
    "ROUTEIQ_DRAIN_TIMEOUT_S": ("routeiq", "drain", "timeout_s"),
    "ROUTEIQ_METRICS_MULTIPROC_DIR": ("routeiq", "metrics", "multiproc_dir"),
    "ROUTEIQ_READ_KEY": ("routeiq", "read_key"),
    "ROUTEIQ_ETCD_CA_CERT": ("routeiq", "leadership", "etcd_ca_cert"),
    "ROUTEIQ_ETCD_CLIENT_CERT": ("routeiq", "leadership", "etcd_client_cert"),
    "ROUTEIQ_ETCD_CLIENT_KEY": ("routeiq", "leadership", "etcd_client_key"),
    "ROUTEIQ_ETCD_USER": ("routeiq", "leadership", "etcd_user"),
    "ROUTEIQ_ETCD_PASSWORD": ("routeiq", "leadership", "etcd_password"),
}


def plain(value: Any) -> Any:
    return value.get_secret_value() if hasattr(value, "get_secret_value") else value


def test_every_override_is_covered_here() -> None:
    assert set(OVERRIDES) == set(ENV_OVERRIDES)
    assert {name: path for name, (path, _) in ENV_OVERRIDES.items()} == EXPECTED_PATHS


@pytest.mark.parametrize("name", sorted(ENV_OVERRIDES))
def test_override_lands_at_its_path_and_beats_yaml(tmp_path: Path, name: str) -> None:
    path = write_yaml(tmp_path, {"model_list": [MODEL], "routeiq": YAML_ROUTEIQ})
    raw, expected = OVERRIDES[name]
    baseline = load_config({}, path)
    config = load_config({name: raw}, path)
    target = EXPECTED_PATHS[name]
    assert plain(attribute_at(config, target)) == expected
    assert plain(attribute_at(baseline, target)) != expected
    for other, other_path in EXPECTED_PATHS.items():
        if other != name:
            assert plain(attribute_at(config, other_path)) == plain(
                attribute_at(baseline, other_path)
            ), other


@pytest.mark.parametrize("name", sorted(ENV_OVERRIDES))
def test_override_applies_without_a_routeiq_section(name: str) -> None:
    raw, expected = OVERRIDES[name]
    assert plain(attribute_at(load_config({name: raw}), EXPECTED_PATHS[name])) == expected


def test_empty_override_is_ignored(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, {"model_list": [MODEL], "routeiq": {"log_level": "warning"}})
    assert load_config({"ROUTEIQ_LOG_LEVEL": ""}, path).routeiq.log_level == "warning"


def test_override_keys_become_secrets() -> None:
    config = load_config({"ROUTEIQ_MASTER_KEY": "mk-1", "ROUTEIQ_ADMIN_KEY": "ak-2"})
    assert (config.master_key, config.admin_key) == ("mk-1", "ak-2")
    assert config.secrets == frozenset({"mk-1", "ak-2", "routeiq-mock-key"})


def test_bad_override_is_reported_at_its_path() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config({"ROUTEIQ_DRAIN_DELAY_S": "soon", "ROUTEIQ_LOG_LEVEL": "loud"})
    assert list(caught.value.problems) == [
        (
            "routeiq.drain.delay_s",
            "Input should be a valid number, unable to parse string as a number",
        ),
        ("routeiq.log_level", "Input should be 'debug', 'info', 'warning' or 'error'"),
    ]


# --- master key and secret references ---


def test_general_settings_master_key_is_honoured_when_routeiq_has_none() -> None:
    config = parse_config(
        {"model_list": [MODEL], "general_settings": {"master_key": "sk-general"}}, {}, source="t"
    )
    assert config.master_key == "sk-general"
    assert "sk-general" in config.secrets


def test_routeiq_master_key_wins_over_general_settings() -> None:
    data = {
        "model_list": [MODEL],
        "general_settings": {"master_key": "sk-general"},
        "routeiq": {"master_key": "sk-rq"},
    }
    assert parse_config(data, {}, source="t").master_key == "sk-rq"
    assert parse_config(data, {"ROUTEIQ_MASTER_KEY": "sk-env"}, source="t").master_key == "sk-env"


def test_env_references_resolve_and_become_secrets() -> None:
    data = {
        "model_list": [
            {
                "model_name": "a",
                "litellm_params": {"model": "openai/a", "api_key": "os.environ/UP_A"},
            },
            {
                "model_name": "b",
                "litellm_params": {"model": "openai/b", "api_base": "os.environ/UP_B_BASE"},
            },
        ],
        "general_settings": {"master_key": "os.environ/MASTER"},
        "routeiq": {"admin_key": "os.environ/ADMIN"},
    }
    env = {
        "UP_A": "sk-up-a",
        "UP_B_BASE": "http://127.0.0.1:9/v1",
        "MASTER": "sk-master",
        "ADMIN": "sk-admin",
    }
    config = parse_config(data, env, source="t")
    assert config.model_list[0].litellm_params.model_dump()["api_key"] == "sk-up-a"
    assert config.model_list[1].litellm_params.model_dump()["api_base"] == "http://127.0.0.1:9/v1"
    assert (config.master_key, config.admin_key) == ("sk-master", "sk-admin")
    assert config.secrets == frozenset(
        {"sk-up-a", "http://127.0.0.1:9/v1", "sk-master", "sk-admin"}
    )


def test_missing_env_references_are_reported_with_their_paths() -> None:
    data = {
        "model_list": [
            {
                "model_name": "m",
                "litellm_params": {"model": "openai/m", "api_key": "os.environ/NO_KEY"},
            }
        ],
        "general_settings": {"master_key": "os.environ/NO_MASTER"},
    }
    assert problems_of(data) == [
        ("general_settings.master_key", "environment variable NO_MASTER is not set"),
        ("model_list[0].litellm_params.api_key", "environment variable NO_KEY is not set"),
    ]


def test_missing_reference_in_a_required_field_is_one_problem() -> None:
    data = {"model_list": [{"model_name": "m", "litellm_params": {"model": "os.environ/MODEL"}}]}
    assert problems_of(data) == [
        ("model_list[0].litellm_params.model", "environment variable MODEL is not set")
    ]


# --- validation: every problem, with its path ---


def test_every_problem_is_reported_in_one_error(tmp_path: Path) -> None:
    data = {
        "model_list": [MODEL, {"model_name": "", "litellm_params": {"api_key": "os.environ/GONE"}}],
        "bogus": 1,
        "litellm_settings": {"set_verbose": True, "drop_params": True},
        "router_settings": {"redis_hots": "localhost", "num_retries": 2},
        "routeiq": {
            "nope": 1,
            "log_level": "loud",
            "drain": {"timeout_s": 0},
            "leadership": {"ttl": 3},
            "services": [{"name": "s", "call": "m:f", "restart": "sometimes"}],
        },
    }
    path = write_yaml(tmp_path, data)
    with pytest.raises(ConfigError) as caught:
        load_config({}, path)
    error = caught.value
    assert error.source == str(path)
    assert list(error.problems) == [
        ("bogus", "unknown field"),
        ("model_list[1].litellm_params.api_key", "environment variable GONE is not set"),
        ("model_list[1].litellm_params.model", "Field required"),
        ("model_list[1].model_name", "String should have at least 1 character"),
        ("routeiq.drain.timeout_s", "Input should be greater than 0"),
        ("routeiq.leadership.ttl", "unknown field"),
        ("routeiq.log_level", "Input should be 'debug', 'info', 'warning' or 'error'"),
        ("routeiq.nope", "unknown field"),
        ("routeiq.services[0].restart", "Input should be 'permanent', 'transient' or 'temporary'"),
        (
            "router_settings.redis_hots",
            "not a litellm.Router setting (a typo?); the settings RouteIQ applies: "
            "docs/migrating-from-litellm.md",
        ),
    ]
    rendered = str(error).splitlines()
    assert rendered[0] == f"invalid configuration in {path}:"
    assert rendered[1:] == [f"  {p}: {m}" for p, m in error.problems]


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"model_list": [MODEL], "extra_section": {}}, "extra_section"),
        ({"model_list": [MODEL], "routeiq": {"unknown": True}}, "routeiq.unknown"),
        (
            {"model_list": [MODEL], "routeiq": {"leadership": {"lease": 1}}},
            "routeiq.leadership.lease",
        ),
        (
            {"model_list": [MODEL], "routeiq": {"event_log": {"sink": "x"}}},
            "routeiq.event_log.sink",
        ),
        (
            {
                "model_list": [MODEL],
                "routeiq": {"hooks": [{"phase": "serve", "call": "m:f", "when": 1}]},
            },
            "routeiq.hooks[0].when",
        ),
    ],
)
def test_unknown_fields_are_reported(data: dict[str, Any], path: str) -> None:
    assert problems_of(data) == [(path, "unknown field")]


@pytest.mark.parametrize(
    ("section", "key", "instead"),
    [
        ("litellm_settings", "success_callback", "GET /metrics"),
        ("litellm_settings", "cache", "caching proxy"),
        ("router_settings", "redis_host", "routeiq.leadership"),
        ("general_settings", "database_url", "routeiq.master_key"),
    ],
)
def test_unsupported_litellm_keys_load_with_a_warning_and_are_dropped(
    section: str, key: str, instead: str
) -> None:
    value = ["prometheus"] if key.endswith("callback") else "os.environ/UNSET_IGNORED"
    config = parse_config({"model_list": [MODEL], section: {key: value}}, {}, source="t")
    [(path, message)] = config.warnings
    assert path == f"{section}.{key}"
    assert message.startswith("not supported, ignored: ")
    assert instead in message
    assert key not in getattr(config, section)


def test_supported_settings_pass_through() -> None:
    data = {
        "model_list": [MODEL],
        "litellm_settings": {"drop_params": True, "num_retries": 2, "request_timeout": 30},
        "router_settings": {"routing_strategy": "simple-shuffle", "num_retries": 1, "timeout": 10},
    }
    config = parse_config(data, {}, source="t")
    assert config.litellm_settings == {"drop_params": True, "num_retries": 2, "request_timeout": 30}
    assert config.router_settings == {
        "routing_strategy": "simple-shuffle",
        "num_retries": 1,
        "timeout": 10,
    }


@pytest.mark.parametrize(
    ("timings", "message"),
    [
        (
            {"lease_ttl_s": 5, "renew_deadline_s": 5},
            "lease_ttl_s (5.0) must be greater than renew_deadline_s (5.0)",
        ),
        (
            {"lease_ttl_s": 4, "renew_deadline_s": 6},
            "lease_ttl_s (4.0) must be greater than renew_deadline_s (6.0)",
        ),
        (
            {"lease_ttl_s": 10, "renew_deadline_s": 2, "retry_period_s": 2},
            "renew_deadline_s (2.0) must be greater than retry_period_s (2.0)",
        ),
        (
            {"lease_ttl_s": 10, "renew_deadline_s": 3, "retry_period_s": 5},
            "renew_deadline_s (3.0) must be greater than retry_period_s (5.0)",
        ),
    ],
)
def test_leadership_timings_must_be_ordered(timings: dict[str, float], message: str) -> None:
    assert problems_of({"model_list": [MODEL], "routeiq": {"leadership": timings}}) == [
        ("routeiq.leadership", message)
    ]


def test_ordered_leadership_timings_are_accepted() -> None:
    routeiq = {"leadership": {"lease_ttl_s": 15, "renew_deadline_s": 10, "retry_period_s": 2}}
    leadership = parse_config(
        {"model_list": [MODEL], "routeiq": routeiq}, {}, source="t"
    ).routeiq.leadership
    assert (leadership.lease_ttl_s, leadership.renew_deadline_s, leadership.retry_period_s) == (
        15.0,
        10.0,
        2.0,
    )


@pytest.mark.parametrize("model_list", [None, []])
def test_model_list_is_required_and_not_empty(model_list: list[Any] | None) -> None:
    data = {} if model_list is None else {"model_list": model_list}
    expected = "Field required" if model_list is None else "must not be empty"
    assert problems_of(data) == [("model_list", expected)]


# --- the file itself ---


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (
            "model_list:\n  - model_name: m\n    litellm_params: {model: openai/m\n",
            "at line 4, column 1",
        ),
        ("model_list:\n  - model_name: m\n   litellm_params: x\n", "at line 3, column 4"),
        ("routeiq:\n  log_level: [info\n  drain: 1\n", "at line 3, column 8"),
    ],
)
def test_yaml_syntax_error_names_the_line(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config({}, path)
    [(field, message)] = caught.value.problems
    assert field == ""
    assert message.startswith(f"YAML syntax error {where}: ")
    assert caught.value.source == str(path)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "config.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config({"ROUTEIQ_CONFIG": str(path)})
    assert list(caught.value.problems) == [("ROUTEIQ_CONFIG", f"file not found: {path}")]
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config({}, path)
    assert list(caught.value.problems) == [("", "the top level must be a mapping")]
    assert (
        str(caught.value) == f"invalid configuration in {path}:\n  the top level must be a mapping"
    )


def test_empty_file_asks_for_a_model_list(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config({}, path)
    assert list(caught.value.problems) == [("model_list", "Field required")]


# --- frozen objects and the error type ---


def test_config_objects_are_frozen() -> None:
    config = load_config({})
    with pytest.raises(ValidationError, match="frozen"):
        config.routeiq = config.routeiq
    with pytest.raises(ValidationError, match="frozen"):
        config.routeiq.leadership.backend = "etcd"
    with pytest.raises(ValidationError, match="frozen"):
        config.model_list[0].model_name = "other"
    with pytest.raises(ValidationError, match="frozen"):
        config.model_list[0].litellm_params.model = "openai/other"
    with pytest.raises(ValidationError, match="frozen"):
        config.model_list[0].litellm_params.api_key = "leaked"  # type: ignore[attr-defined]
    assert isinstance(config.model_list, tuple)


def test_dict_fields_of_a_config_are_frozen_too() -> None:
    config = parse_config(
        {"model_list": [MODEL], "router_settings": {"timeout": 10}}, {}, source="t"
    )
    with pytest.raises(TypeError):
        config.router_settings["timeout"] = 1  # type: ignore[index]


def test_config_error_is_a_value_error_and_a_gateway_error() -> None:
    error = ConfigError([("a.b", "bad"), ("c", "worse")], source="x.yaml")
    assert isinstance(error, ValueError)
    assert isinstance(error, GatewayError)
    assert str(error) == "invalid configuration in x.yaml:\n  a.b: bad\n  c: worse"
    assert ConfigError("plain").problems == (("", "plain"),)
    with pytest.raises(ValueError, match="unknown field"):
        parse_config({"model_list": [MODEL], "x": 1}, {}, source="t")


def test_literal_values_under_secret_sounding_keys_become_secrets() -> None:
    data = {
        "model_list": [
            {
                "model_name": "b",
                "litellm_params": {
                    "model": "bedrock/x",
                    "aws_secret_access_key": "aws-secret-value-1",
                    "aws_session_token": "aws-session-token-1",
                    "client_secret": "client-secret-1",
                    "max_tokens": 100,
                    "tenant_id": "tenant-not-secret",
                },
            }
        ],
        "routeiq": {"leadership": {"key_prefix": "/routeiq-prefix"}},
    }
    secrets = parse_config(data, {}, source="t").secrets
    assert {"aws-secret-value-1", "aws-session-token-1", "client-secret-1"} <= secrets
    assert "tenant-not-secret" not in secrets
    assert "/routeiq-prefix" not in secrets
