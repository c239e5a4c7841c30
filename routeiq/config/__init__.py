"""Gateway configuration: frozen models and the YAML/env loader."""

from routeiq.config.loader import embedded_default, load_config, parse_config
from routeiq.config.model import GatewayConfig

__all__ = ["GatewayConfig", "embedded_default", "load_config", "parse_config"]
