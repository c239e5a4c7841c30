"""Config problems as ``(path, message)`` pairs that never carry a secret, whole or in part.

pydantic's own rendering of a ``ValidationError`` echoes an excerpt of each bad input
(``input_value='sk-live-abcdef...uvwx'``); a neighbouring secret ends up in events, logs and
HTTP answers that way. ``validation_problems`` keeps only the location and pydantic's message,
which states the expected type, never the input. ``scrub_fragments`` is the second line of
defence for text RouteIQ does not control (a library's exception message): it masks every run
of characters that shares ``FRAGMENT`` or more consecutive characters with a known secret.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import ValidationError

__all__ = [
    "FRAGMENT",
    "MASK",
    "path_of",
    "require_unique",
    "scrub_fragments",
    "validation_problems",
]

FRAGMENT = 6
MASK = "***"


def require_unique(what: str, names: Iterable[str]) -> None:
    """``ValueError`` naming every repeated name, for a validator of a list of named entries."""
    seen = list(names)
    duplicates = sorted({n for n in seen if seen.count(n) > 1})
    if duplicates:
        raise ValueError(f"{what} names must be unique; repeated: {', '.join(duplicates)}")


def path_of(loc: Sequence[str | int]) -> str:
    """``("model_list", 0, "litellm_params")`` -> ``model_list[0].litellm_params``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "<root>"


def validation_problems(
    exc: ValidationError, *, prefix: Sequence[str | int] = ()
) -> list[tuple[str, str]]:
    """One problem per error, with its path; no input value is ever part of a message."""
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    locs = [tuple(err["loc"]) for err in errors]
    problems: list[tuple[str, str]] = []
    for err, loc in zip(errors, locs, strict=True):
        # A list whose items failed also fails its own length check; report the items only.
        if err["type"] == "too_short" and any(o[: len(loc)] == loc and o != loc for o in locs):
            continue
        problems.append((path_of((*prefix, *loc)), message_of(err)))
    return problems


def message_of(err: Any) -> str:
    kind = err.get("type")
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "too_short":
        return "must not be empty"
    return str(err.get("msg", "invalid")).removeprefix("Value error, ")


def scrub_fragments(text: str, secrets: Iterable[str], *, fragment: int = FRAGMENT) -> str:
    """``text`` with every character that is part of a ``fragment``-long substring of any
    secret masked (runs of masked characters become one ``***``)."""
    pieces = {
        secret[i : i + fragment]
        for secret in secrets
        if len(secret) >= fragment
        for i in range(len(secret) - fragment + 1)
    }
    if not pieces or len(text) < fragment:
        return text
    masked = [False] * len(text)
    for i in range(len(text) - fragment + 1):
        if text[i : i + fragment] in pieces:
            for j in range(i, i + fragment):
                masked[j] = True
    out: list[str] = []
    for i, char in enumerate(text):
        if not masked[i]:
            out.append(char)
        elif i == 0 or not masked[i - 1]:
            out.append(MASK)
    return "".join(out)
