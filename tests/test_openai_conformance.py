"""OpenAI conformance (issue 18 item 5): the Serve app's response bodies against OpenAI's published
schema (``../shared/data/openai/openapi.json``), and the official ``openai`` client against the
app.

The body builders of ``retro_ray/serve/openai_api.py`` are checked here without an engine (every
option that changes a body's shape). The app itself is checked on both backends and both model
kinds: the completion model (the zoo-style tiny Llama with a plain tokenizer) in
``tests/test_serve.py`` (its torch app and its vLLM app, no extra engine start), the chat-template
model in this module (one torch and one vLLM app, both slow).
"""

from __future__ import annotations

import json

import pytest

from retro_ray.llm.base import Completion
from retro_ray.serve.openai_api import (
    chat_response,
    completion_response,
    error_response,
    models_response,
)
from tests.support.openai_schema import request_violations, violations


class _Tokenizer:
    """Decodes each id to a text of its own (the builders ask only ``decode``)."""

    def decode(self, ids: list[int]) -> str:
        return "".join(f" w{i}" for i in ids)


def _completions() -> list[Completion]:
    return [
        Completion("a b", 5, 2, [3, 4], [-0.5, -1.25], "stop"),
        Completion("c", 5, 1, [7], [-0.1], "length"),
    ]


@pytest.mark.parametrize("logprobs", [False, True])
@pytest.mark.parametrize("token_ids", [False, True])
def test_built_bodies_conform(logprobs: bool, token_ids: bool) -> None:
    tok = _Tokenizer()
    many = completion_response(_completions(), "retro@3", tok, logprobs, token_ids)
    assert violations("/completions", "post", 200, many) == []
    chat = chat_response(_completions()[0], "retro@3", tok, logprobs, token_ids)
    assert violations("/chat/completions", "post", 200, chat) == []
    assert chat["choices"][0]["message"]["refusal"] is None
    if logprobs:
        assert chat["choices"][0]["logprobs"]["refusal"] is None


def test_models_and_error_bodies_conform() -> None:
    assert violations("/models", "get", 200, models_response(["base", "retro", "retro@1"])) == []
    for status in (400, 401, 404, 413, 503):
        body = json.loads(error_response(status, "bad input", "prompt", "invalid_value").body)
        assert violations("/completions", "post", status, body) == []
        assert violations("/chat/completions", "post", status, body) == []


def test_the_validator_finds_what_the_schema_requires() -> None:
    """The check can fail: what the app sent before the fix (no ``refusal``) is a violation."""
    chat = chat_response(_completions()[0], "m", _Tokenizer(), True, False)
    del chat["choices"][0]["message"]["refusal"]
    chat["choices"][0]["finish_reason"] = "eos"
    found = violations("/chat/completions", "post", 200, chat)
    assert any("'refusal' is a required property" in v for v in found)
    assert any(v.startswith("choices.0.finish_reason") for v in found)
    assert violations("/models", "get", 200, {"object": "list"}) == [
        "(root): 'data' is a required property"
    ]
    assert request_violations("/chat/completions", "post", {"model": "m"}) != []
