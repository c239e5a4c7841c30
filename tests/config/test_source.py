"""Reading and parsing a config source is total: every input ends in a config or a
``ConfigError`` that says what is wrong and where (never another exception, never a block)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from routeiq.config.loader import load_config, parse_config_text
from routeiq.config.source import (
    MAX_CONFIG_BYTES,
    MAX_YAML_ALIASES,
    parse_yaml,
    read_config_bytes,
)
from routeiq.errors import ConfigError
from tests.config.hostile import ALIAS_BOMB

GOOD = 'model_list: [{model_name: m, litellm_params: {model: "openai/m"}}]\n'


def rendered(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config({}, path)
    return caught.value.render()


def test_a_non_utf8_byte_is_named_by_line_column_and_offset(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(GOOD.encode() + b"routeiq: {log_level: \xff}\n")
    assert rendered(path).splitlines() == [
        f"invalid configuration in {path}:",
        f"  not valid UTF-8: byte 0xff at line 2, column 22 (byte offset {len(GOOD) + 21}); "
        "save the file as UTF-8",
    ]


def test_an_alias_bomb_is_rejected_before_it_expands(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(ALIAS_BOMB)
    message = rendered(path)
    assert "YAML expands to more than 200000 nodes" in message
    assert "aliases (*name) repeat their anchor's content" in message


def test_modest_anchors_and_merge_keys_still_work() -> None:
    text = (
        "base: &base {model: openai/m, api_base: 'http://127.0.0.1:9/v1'}\n"
        "model_list:\n"
        "  - {model_name: a, litellm_params: *base}\n"
        "  - {model_name: b, litellm_params: {<<: *base, model: openai/b}}\n"
    )
    data = parse_yaml(text, source="t")
    assert data["model_list"][1]["litellm_params"]["model"] == "openai/b"


def test_too_many_aliases_are_rejected() -> None:
    text = "x: &x 1\ny: [" + ", ".join(["*x"] * (MAX_YAML_ALIASES + 1)) + "]\n"
    with pytest.raises(ConfigError, match=f"more than {MAX_YAML_ALIASES} aliases"):
        parse_yaml(text, source="t")


def test_a_recursive_alias_is_rejected() -> None:
    with pytest.raises(ConfigError, match="YAML alias at line 1 refers to itself"):
        parse_yaml("a: &a [1, *a]\n", source="t")


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    # libyaml stops at its own depth limit; the pure-Python parser would hit RecursionError,
    # which the loader turns into "nested too deeply".
    with pytest.raises(ConfigError, match=r"exceeded maximum nesting depth|nested too deeply"):
        parse_config_text("x: " + "[" * 50_000 + "]" * 50_000 + "\n", {}, source="t")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model_list: 2024-13-45\n", "YAML value cannot be read"),
        ("a: \x00\n", "character U+0000 is not allowed"),
        ("a: !!python/object:os.system {}\n", "YAML syntax error at line 1"),
        ("a: [1\n", "YAML syntax error at line 2"),
    ],
)
def test_malformed_yaml_is_a_config_error(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("+", r"\+")):
        parse_config_text(text, {}, source="t")


def test_a_directory_is_not_a_config(tmp_path: Path) -> None:
    assert f"{tmp_path} is a directory, not a regular file" in rendered(tmp_path)


@pytest.mark.timeout(10)
def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    os.mkfifo(path)
    assert f"{path} is a FIFO, not a regular file" in rendered(path)


def test_a_file_over_the_size_limit_is_not_read(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    with path.open("wb") as f:
        f.truncate(50 * 1024 * 1024)
    assert f"{path} is larger than {MAX_CONFIG_BYTES} bytes (at least 52428800)" in rendered(path)


def test_a_file_at_the_limit_is_read(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(b"#" * MAX_CONFIG_BYTES)
    assert len(read_config_bytes(path)) == MAX_CONFIG_BYTES


def test_an_unreadable_file_names_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(GOOD)
    path.chmod(0)
    if os.access(path, os.R_OK):
        pytest.skip("running as root: permissions do not apply")
    assert "Permission denied" in rendered(path)
