"""Response bodies shared by the control plane's routes, as ``/openapi.json`` names them."""

from __future__ import annotations

from pydantic import BaseModel

__all__ = ["ErrorBody", "HealthStatus"]


class HealthStatus(BaseModel):
    status: str
    state: str
    error: str | None = None


class ErrorBody(BaseModel):
    error: str
