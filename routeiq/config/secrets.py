"""Which config fields hold a secret: one rule, judged by the field's (or env var's) name.

The loader uses it to collect the literal values to redact from events, logs and errors; etcd
config sync (``routeiq.leadership.publishable``) uses it to refuse publishing a literal secret.
One rule for both means that what is refused in etcd is exactly what is redacted everywhere.

A name holds a secret when its last word is ``key``, ``secret``, ``password``, ``passwd``,
``pwd``, ``token``, ``credential`` or ``credentials`` (words split at ``_``, ``-``, ``.`` and
camelCase humps: ``api_key``, ``OPENAI_API_KEY``, ``aws_secret_access_key``, ``clientSecret``,
``azure_ad_token``, ``vertex_credentials``), except:

- a price per unit (``input_cost_per_token``): the word before the last is ``per``;
- names that hold where a secret is, not the secret (``etcd_client_key``: a PEM file's path).

Identifiers next to a secret are not secrets (``aws_access_key_id``, ``key_prefix``), nor are
counts (``max_tokens``).

Any field's value can also carry one: a URL with a password (``postgres://user:pw@db``,
``url_password``), whatever the field is called.
"""

from __future__ import annotations

import re

__all__ = ["SECRET_WORDS", "is_secret_name", "url_password"]

SECRET_WORDS = frozenset(
    {"key", "secret", "password", "passwd", "pwd", "token", "credential", "credentials"}
)
# Named like secrets, yet they hold where a secret is, not the secret itself.
_NOT_SECRETS = frozenset({"etcd_client_key"})
_HUMP = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_SEPARATORS = re.compile(r"[_\-.\s]+")
_URL_PASSWORD = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^/@:\s]*:([^/@\s]+)@")


def is_secret_name(name: object) -> bool:
    """Whether a field (or env var) called ``name`` holds a secret (see the module's rule)."""
    text = str(name)
    if text.lower() in _NOT_SECRETS:
        return False
    words = [w for w in _SEPARATORS.split(_HUMP.sub("_", text).lower()) if w]
    if not words or words[-1] not in SECRET_WORDS:
        return False
    return not (len(words) >= 2 and words[-2] == "per")


def url_password(value: str) -> str | None:
    """The password in a URL like ``scheme://user:password@host``, ``None`` if there is none."""
    match = _URL_PASSWORD.match(value)
    return None if match is None else match.group(1)
