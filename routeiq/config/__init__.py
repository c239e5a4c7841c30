"""Gateway configuration: frozen models, the bounded YAML/env loader, the checks ``routeiq
check`` runs, and the table of LiteLLM proxy keys."""

from routeiq.config.loader import embedded_default, load_config, parse_config
from routeiq.config.model import GatewayConfig

__all__ = ["GatewayConfig", "embedded_default", "load_config", "parse_config"]
