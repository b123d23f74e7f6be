"""LLM clients: the ``LLMClient`` protocol and its backends.

``OpenAIClient`` is imported lazily so that importing the protocol does not import the ``openai``
SDK (engines and Ray workers that never call an HTTP endpoint stay light)."""

from typing import Any

from retro_ray.llm.base import Completion, EndpointError, LLMClient, SamplingParams, UsageTotals

__all__ = [
    "Completion",
    "EndpointError",
    "LLMClient",
    "OpenAIClient",
    "SamplingParams",
    "UsageTotals",
]


def __getattr__(name: str) -> Any:
    if name == "OpenAIClient":
        from retro_ray.llm.openai_client import OpenAIClient

        return OpenAIClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
