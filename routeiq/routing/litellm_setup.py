"""Importing litellm with its side effects tamed, and building a Router per app instance.

``import litellm`` fetches the model cost map over the network unless
``LITELLM_LOCAL_MODEL_COST_MAP`` is set, loads ``.env`` files unless ``LITELLM_MODE`` is set,
and attaches its own stderr handlers to its loggers (so every line would print twice beside
ours). ``import_litellm`` sets the two variables (only if the operator has not) and hands
litellm's loggers to the application's logging. It is called in the ``patched`` phase only.

Nothing here sets litellm's module globals or patches its classes: everything per app instance
lives on that instance's ``Router``.
"""

from __future__ import annotations

import logging
import os
from types import ModuleType
from typing import Any

from routeiq.config.model import GatewayConfig, thaw
from routeiq.errors import ConfigError

__all__ = ["LITELLM_LOGGERS", "build_router", "import_litellm"]

LITELLM_LOGGERS = ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy")
TAMED_ENV = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_MODE": "PRODUCTION"}


def import_litellm() -> ModuleType:
    for name, value in TAMED_ENV.items():
        os.environ.setdefault(name, value)
    import litellm

    for name in LITELLM_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True
    return litellm


def build_router(litellm: ModuleType, config: GatewayConfig) -> Any:
    """A new ``litellm.Router`` for ``config``; a settings error is a ``ConfigError``."""
    model_list = [thaw(d.model_dump(mode="python")) for d in config.model_list]
    settings = thaw(config.router_settings)
    try:
        return litellm.Router(model_list=model_list, **settings)
    except (TypeError, ValueError) as exc:
        raise ConfigError([("router_settings", f"rejected by litellm.Router: {exc}")]) from exc
