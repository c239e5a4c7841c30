"""RouteIQ: an OpenAI-compatible LLM gateway on LiteLLM's Router with an event-sourced lifecycle.

Importing this package has no side effects; run the gateway with ``hypercorn routeiq.app:app``
or ``routeiq serve``.
"""

from routeiq.app import GatewayApp, create_app
from routeiq.assembly.gateway import Gateway
from routeiq.config import GatewayConfig, load_config
from routeiq.errors import (
    ConfigError,
    GatewayError,
    InvalidTransition,
    LeadershipLost,
    StartupError,
    UpstreamError,
)
from routeiq.lifecycle.events import Event, EventLog

__all__ = [
    "ConfigError",
    "Event",
    "EventLog",
    "Gateway",
    "GatewayApp",
    "GatewayConfig",
    "GatewayError",
    "InvalidTransition",
    "LeadershipLost",
    "StartupError",
    "UpstreamError",
    "create_app",
    "load_config",
]

__version__ = "0.1.0"
