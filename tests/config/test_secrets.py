"""One rule for secret-bearing fields: what the loader redacts is what etcd sync refuses."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from routeiq.config.loader import parse_config_text
from routeiq.config.secrets import is_secret_name, url_password
from routeiq.leadership.publishable import literal_secrets


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("api_key", True),
        ("OPENAI_API_KEY", True),
        ("apiKey", True),
        ("client_secret", True),
        ("clientSecret", True),
        ("aws_secret_access_key", True),
        ("aws_session_token", True),
        ("azure_ad_token", True),
        ("vertex_credentials", True),
        ("redis_password", True),
        ("db-pwd", True),
        ("key", True),
        ("master_key", True),
        ("etcd_password", True),
        ("key_prefix", False),
        ("max_tokens", False),
        ("input_cost_per_token", False),
        ("output_cost_per_token", False),
        ("aws_access_key_id", False),
        ("api_base", False),
        ("tenant_id", False),
        ("secret_name", False),
        ("etcd_client_key", False),  # a path to a PEM file
        ("", False),
    ],
)
def test_secret_names(name: str, secret: bool) -> None:
    assert is_secret_name(name) is secret


@pytest.mark.parametrize(
    ("value", "password"),
    [
        ("postgres://llm:hunter2pass@db:5432/litellm", "hunter2pass"),
        ("redis://:only-a-password@cache:6379", "only-a-password"),
        ("https://hooks.example.test/abc", None),
        ("https://user@host/x", None),
        ("not a url: at@all", None),
    ],
)
def test_url_passwords(value: str, password: str | None) -> None:
    assert url_password(value) == password


# Every kind of literal secret the rule knows, in a config the loader accepts.
CONFIG: dict[str, Any] = {
    "model_list": [
        {
            "model_name": "a",
            "litellm_params": {
                "model": "openai/a",
                "api_key": "sk-literal-openai-1",
                "input_cost_per_token": 0.000001,
                "max_tokens": 100,
            },
        },
        {
            "model_name": "b",
            "litellm_params": {
                "model": "bedrock/b",
                "aws_access_key_id": "AKIA-identifier",
                "aws_secret_access_key": "aws-secret-literal-2",
                "aws_session_token": "aws-session-literal-3",
                "clientSecret": "camel-secret-literal-4",
                "api_base": "https://bedrock:pw-in-url-5@bedrock.example.test/v1",
            },
        },
    ],
    "general_settings": {"database_url": "postgres://llm:db-password-6@db:5432/litellm"},
    "routeiq": {
        "admin_key": "admin-literal-7",
        "leadership": {"key_prefix": "/routeiq-prefix", "etcd_password": "etcd-literal-8"},
    },
}
LITERALS = {
    "sk-literal-openai-1",
    "aws-secret-literal-2",
    "aws-session-literal-3",
    "camel-secret-literal-4",
    "pw-in-url-5",
    "db-password-6",
    "admin-literal-7",
    "etcd-literal-8",
}


def test_what_etcd_refuses_is_what_the_loader_redacts() -> None:
    text = yaml.safe_dump(CONFIG)
    refused = literal_secrets(text)
    assert sorted(refused) == [
        "general_settings.database_url",
        "model_list[0].litellm_params.api_key",
        "model_list[1].litellm_params.api_base",
        "model_list[1].litellm_params.aws_secret_access_key",
        "model_list[1].litellm_params.aws_session_token",
        "model_list[1].litellm_params.clientSecret",
        "routeiq.admin_key",
        "routeiq.leadership.etcd_password",
    ]
    secrets = parse_config_text(text, {}, source="t").secrets
    assert secrets >= LITERALS
    # Nothing else from the text: identifiers, prefixes, prices and counts stay readable.
    for plain in ("AKIA-identifier", "/routeiq-prefix", "1e-06", "100", "bedrock/b"):
        assert plain not in secrets


def test_secrets_given_by_env_overrides_are_secrets() -> None:
    env = {
        "ROUTEIQ_ETCD_USER": "gateway",
        "ROUTEIQ_ETCD_PASSWORD": "etcd-env-password-9",
        "ROUTEIQ_READ_KEY": "read-env-key-10",
    }
    secrets = parse_config_text(
        "model_list: [{model_name: m, litellm_params: {model: x/m}}]", env, source="t"
    ).secrets
    assert secrets >= {"etcd-env-password-9", "read-env-key-10"}
    assert "gateway" not in secrets
