"""Test fixtures shared by the test suite (not part of the product)."""

from .openai_server import OpenAIServer, RecordedRequest

__all__ = ["OpenAIServer", "RecordedRequest"]
