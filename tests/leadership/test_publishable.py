"""Which fields of a config text count as literal secrets (refused by etcd config sync)."""

from __future__ import annotations

import pytest

from routeiq.errors import ConfigError
from routeiq.leadership.publishable import check_publishable, literal_secrets

CONFIG = """
model_list:
  - model_name: a
    litellm_params: {model: openai/a, api_key: os.environ/OPENAI_API_KEY, max_tokens: 5}
  - model_name: b
    litellm_params:
      model: bedrock/b
      aws_access_key_id: os.environ/AWS_ID
      aws_secret_access_key: wJalrXUtnFEMI-literal
      aws_session_token: ""
      vertex_credentials: null
general_settings:
  master_key: sk-master-literal
  database_url: postgres://llm:hunter2pass@db:5432/litellm
  alerting_url: https://hooks.example.test/abc
environment_variables:
  AZURE_API_KEY: azure-literal-value
  AZURE_API_VERSION: "2024-02-01"
routeiq:
  admin_key: os.environ/ADMIN_KEY
  read_key: 12345678
  leadership: {key_prefix: /routeiq, etcd_password: pw-literal, etcd_user: root}
"""


def test_every_literal_secret_is_named_by_its_path_and_nothing_else() -> None:
    assert literal_secrets(CONFIG) == [
        "model_list[1].litellm_params.aws_secret_access_key",
        "general_settings.master_key",
        "general_settings.database_url",
        "environment_variables.AZURE_API_KEY",
        "routeiq.read_key",
        "routeiq.leadership.etcd_password",
    ]


def test_the_error_names_paths_and_no_value() -> None:
    with pytest.raises(ConfigError) as raised:
        check_publishable(CONFIG, source="config.yaml")
    message = str(raised.value)
    assert "general_settings.master_key: a literal secret cannot be published" in message
    for fragment in ("wJalrXUt", "master-lit", "hunter2", "azure-lit", "1234", "pw-lit"):
        assert fragment not in message


def test_prices_per_token_are_no_secrets() -> None:
    text = """
model_list:
  - model_name: a
    litellm_params: {model: openai/a, input_cost_per_token: 0.000001, output_cost_per_token: 2e-6}
"""
    assert literal_secrets(text) == []


def test_anchors_are_followed_once_and_merge_keys_keep_the_path() -> None:
    text = """
base: &base {api_key: literal-in-anchor}
model_list:
  - {model_name: a, litellm_params: {<<: *base, model: openai/a}}
"""
    assert literal_secrets(text) == ["base.api_key"]


@pytest.mark.timeout(10)  # expanded, it would be 9**12 scalars: it would never finish
def test_an_alias_bomb_costs_what_its_text_costs() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 12):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]")
    assert literal_secrets("\n".join(lines)) == []


def test_text_that_is_not_yaml_is_left_to_the_parser() -> None:
    assert literal_secrets("model_list: [unclosed") == []
    assert literal_secrets("") == []
