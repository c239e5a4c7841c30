"""Deployments pointing at test upstreams, and one-line calls through a Router."""

from __future__ import annotations

from typing import Any

from tests.support.upstream import Upstream

MESSAGES = [{"role": "user", "content": "hi"}]


def deployment(
    group: str, deployment_id: str, upstream: Upstream, model: str = "gpt", **model_info: Any
) -> dict[str, Any]:
    return {
        "model_name": group,
        "litellm_params": {
            "model": f"openai/{model}",
            "api_base": upstream.base_url,
            "api_key": "k",
        },
        "model_info": {"id": deployment_id, **model_info},
    }


def mock_deployment(group: str, deployment_id: str, **model_info: Any) -> dict[str, Any]:
    return {
        "model_name": group,
        "litellm_params": {
            "model": "openai/x",
            "mock_response": f"hi from {deployment_id}",
            "api_key": "k",
        },
        "model_info": {"id": deployment_id, **model_info},
    }


async def chat(router: Any, model: str = "chat", **kwargs: Any) -> Any:
    return await router.acompletion(model=model, messages=MESSAGES, **kwargs)
