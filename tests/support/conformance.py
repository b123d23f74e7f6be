"""Exercises a running Serve app the way OpenAI clients call it and checks every response body
against OpenAI's schema (``tests/support/openai_schema.py``): each route, each option that changes
a body's shape, and the errors a client meets. ``check_app`` returns the failures, one line each
(empty: every body conforms and every status is the expected one)."""

from __future__ import annotations

from typing import Any

import httpx

from tests.support.openai_schema import violations

CONVERSATION = [
    {"role": "system", "content": "Answer with one action."},
    {"role": "user", "content": "Question: where was Bob Lee born?"},
    {"role": "assistant", "content": "> Search[Bob Lee]"},
    {"role": "user", "content": "Bob Lee was born near Alice Kay."},
]


def calls(model: str, max_tokens_limit: int) -> list[tuple[str, str, dict[str, Any] | None, int]]:
    """(label, route, body, expected status) of every call ``check_app`` makes; ``route`` is the
    spec's path (``/completions``), the method is GET for a None body, else POST."""
    small = {"model": model, "max_tokens": 4, "temperature": 0}
    return [
        ("models", "/models", None, 200),
        ("completion", "/completions", {**small, "prompt": "> Search[Alice Kay]\n"}, 200),
        (
            "completion, two prompts, logprobs, token ids, sampled",
            "/completions",
            {
                **small,
                "prompt": ["Bob Lee", "Alice Kay was"],
                "logprobs": 1,
                "return_token_ids": True,
                "temperature": 1.0,
                "seed": 7,
            },
            200,
        ),
        (
            "completion, stop",
            "/completions",
            {**small, "prompt": "Bob", "stop": ["\n", "."], "max_tokens": 12},
            200,
        ),
        ("chat", "/chat/completions", {**small, "messages": CONVERSATION}, 200),
        (
            "chat, logprobs, token ids, max_completion_tokens",
            "/chat/completions",
            {
                "model": model,
                "messages": CONVERSATION,
                "max_completion_tokens": 6,
                "logprobs": True,
                "top_logprobs": 1,
                "return_token_ids": True,
            },
            200,
        ),
        (
            "chat, content parts, stop",
            "/chat/completions",
            {
                **small,
                "messages": [{"role": "user", "content": [{"type": "text", "text": "Bob Lee"}]}],
                "stop": "\n",
            },
            200,
        ),
        (
            "chat, streaming (not served)",
            "/chat/completions",
            {**small, "stream": True, "messages": CONVERSATION},
            400,
        ),
        (
            "completion, bad temperature",
            "/completions",
            {**small, "prompt": "x", "temperature": 9},
            400,
        ),
        ("chat, no messages", "/chat/completions", {**small, "messages": []}, 400),
        (
            "completion, unknown model",
            "/completions",
            {**small, "model": "nobody", "prompt": "x"},
            404,
        ),
        (
            "chat, max_tokens over the limit",
            "/chat/completions",
            {**small, "messages": CONVERSATION, "max_tokens": max_tokens_limit + 1},
            400,
        ),
    ]


def check_app(
    url: str,
    model: str,
    token: str | None,
    max_tokens_limit: int,
    max_request_bytes: int | None = None,
) -> list[str]:
    """Every failure of the app at ``url`` (``.../v1``), one line each: a status other than the
    expected one, or a body that breaks the schema of its route and status. Also checks that a
    request without the bearer token (when ``token`` is set) is a 401 and one over
    ``max_request_bytes`` (when given) a 413, both in the error schema."""
    headers = {"authorization": f"Bearer {token}"} if token else {}
    failures: list[str] = []
    checks = calls(model, max_tokens_limit)
    if token:
        checks.append(("models, no token", "/models", None, 401))
    if max_request_bytes:
        huge = {"model": model, "prompt": "x" * (max_request_bytes + 1), "max_tokens": 1}
        checks.append(("completion, body too large", "/completions", huge, 413))
    with httpx.Client(base_url=url, timeout=120) as client:
        for label, route, body, expected in checks:
            sent = headers if not label.endswith("no token") else {}
            if body is None:
                response = client.get(route, headers=sent)
            else:
                response = client.post(route, json=body, headers=sent)
            if response.status_code != expected:
                failures.append(
                    f"{label}: status {response.status_code}, expected {expected}: "
                    f"{response.text[:200]}"
                )
                continue
            method = "get" if body is None else "post"
            for problem in violations(route, method, response.status_code, response.json()):
                failures.append(f"{label} ({response.status_code}): {problem}")
    return failures
