from tests.support.procs import start_gateway

__all__ = ["start_gateway"]
