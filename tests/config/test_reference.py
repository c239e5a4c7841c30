"""docs/configuration.md is generated from the config model and must be current."""

from __future__ import annotations

from pathlib import Path

from routeiq.config.loader import ENV_OVERRIDES
from routeiq.config.reference import REFERENCE_PATH, render_reference

REPO = Path(__file__).resolve().parents[2]


def test_configuration_reference_is_current() -> None:
    committed = (REPO / REFERENCE_PATH).read_text()
    assert committed == render_reference(), (
        f"{REFERENCE_PATH} is stale: regenerate it with "
        f"`routeiq config reference > {REFERENCE_PATH}`"
    )


def test_the_reference_names_every_key_and_env_override() -> None:
    text = render_reference()
    for name, (path, _) in ENV_OVERRIDES.items():
        assert f"| `{'.'.join(path)}` |" in text
        assert f"`{name}`" in text
    for key in (
        "model_list[].litellm_params.model",
        "routeiq.leadership.lease_ttl_s",
        "routeiq.services[].restart",
    ):
        assert f"| `{key}` |" in text
    row = next(line for line in text.splitlines() if line.startswith("| `routeiq.drain.delay_s`"))
    assert row == (
        "| `routeiq.drain.delay_s` | `float` | `2.0` | `ROUTEIQ_DRAIN_DELAY_S` "
        "| readiness 503 before the listener closes; >= 0 |"
    )
