"""What may be stored in etcd: a config as written, with ``os.environ/NAME`` for every secret.

etcd is shared by every replica and readable by whoever holds its credentials, so a config
published there must not carry secrets: each replica resolves ``os.environ/NAME`` references
from its own environment. ``literal_secrets`` finds the fields that hold a secret in the text
itself: a secret-bearing field (``routeiq.config.secrets.is_secret_name``, the rule the loader
also redacts by: ``api_key``, ``master_key``, ``aws_secret_access_key``, ``etcd_password``…)
with a literal value, a secret-named entry of ``environment_variables``, and a URL with a
password in it (``postgres://user:pw@host``). It names paths, never values.

The YAML is composed, not constructed: each node is visited once, so aliases cannot multiply
the work (an alias bomb costs what its text costs) and no value is ever resolved.
"""

from __future__ import annotations

from typing import Any

import yaml

from routeiq.config.secrets import is_secret_name, url_password
from routeiq.errors import ConfigError

__all__ = ["LITERAL_SECRET_HINT", "check_publishable", "literal_secrets"]

_ENV_REF = "os.environ/"

LITERAL_SECRET_HINT = (
    "a literal secret cannot be published to etcd: write os.environ/NAME instead and set NAME "
    "on every replica"
)


def literal_secrets(text: str) -> list[str]:
    """The paths of the fields in YAML ``text`` that hold a literal secret (``[]`` if none, or
    if ``text`` is not YAML: parsing reports that with its own message)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return []
    found: list[str] = []
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, str, bool]] = [] if root is None else [(root, "", False)]
    while stack:
        node, path, secret_named = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in reversed(node.value):
                key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
                child = path if key == "<<" else (f"{path}.{key}" if path else key)
                named = is_secret_name(key) and key != "<<"
                stack.append((value_node, child, named))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in reversed(list(enumerate(node.value))):
                stack.append((item, f"{path}[{index}]", secret_named))
        elif isinstance(node, yaml.ScalarNode) and _is_literal(node, secret_named):
            found.append(path or "<root>")
    return found


def _is_literal(node: yaml.ScalarNode, secret_named: bool) -> bool:
    value: Any = node.value
    if not isinstance(value, str) or not value or value.startswith(_ENV_REF):
        return False
    if node.tag == "tag:yaml.org,2002:null" or value in ("~", "null", "Null", "NULL"):
        return False
    return secret_named or url_password(value) is not None


def check_publishable(text: str, *, source: str) -> None:
    """Raise ``ConfigError`` naming every field of ``text`` that holds a literal secret."""
    paths = literal_secrets(text)
    if paths:
        raise ConfigError([(path, LITERAL_SECRET_HINT) for path in paths], source=source)
