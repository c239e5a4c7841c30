"""Hostile config inputs shared by the loader, CLI and reload tests."""

from __future__ import annotations

# A 409-byte "billion laughs" (the was 966 bytes): nine levels of nine aliases,
# 9**9 strings once expanded.
ALIAS_BOMB = (
    'model_list: [{model_name: m, litellm_params: {model: "openai/m"}}]\n'
    'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    + "".join(
        f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    )
)


def fragments(secret: str, size: int = 6) -> list[str]:
    """Every ``size``-character substring of ``secret``."""
    return [secret[i : i + size] for i in range(len(secret) - size + 1)]
