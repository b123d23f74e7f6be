"""An ``LLMClient`` for any OpenAI-compatible endpoint (a cloud API, a vLLM server, our Serve app).

Two transports carry the same JSON bodies (``EndpointConfig.http_transport``):

* ``direct`` (the default): the OpenAI wire protocol on a plain ``aiohttp`` session. Measured
  against the replay server at 256 requests in flight it costs about a fifth of the CPU per call
  of the SDK's typed ``completions.create`` (``benchmarks.rollout``): at high concurrency a
  rollout worker's CPU per call is its latency.
* ``aiohttp`` / ``httpx``: the official ``openai`` SDK's ``AsyncOpenAI`` on that HTTP client,
  through its documented low-level ``post`` (the SDK's auth, headers and transport; its typed
  request and response models skipped, as they cost most of its CPU per call).

Either way the SDK's own retries are off: we retry ourselves so that every retry is logged
(endpoint, status, attempt), counted in ``UsageTotals.retries`` and, when retries run out, turned
into one ``EndpointError`` that names the endpoint and says what to check. A run must stop on a
dead endpoint, never count it as a failed episode.

A refusal of one request for what it holds (400, 413, 422 and the other 4xx that are neither
retried, 408/409/429, nor about the endpoint's setup, 401/403/404) is not an outage: it raises
``RequestRejected`` at once, and the trial loop records that episode as failed with the reason.

The API key is read from the environment variable named in the config and never appears in logs,
error messages or ``repr``. Errors are raised ``from None`` and carry the status, the error's type
and a short excerpt of the provider's message (key scrubbed), never the provider's whole raw body
(which may echo the prompt or the key).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Sequence
from typing import Any

from retro_ray.config import EndpointConfig
from retro_ray.config.secrets import read_secret
from retro_ray.llm.base import (
    ChatMessage,
    Completion,
    EndpointError,
    RequestRejected,
    SamplingParams,
    UsageTotals,
)
from retro_ray.llm.http_transport import (
    RETRYABLE_STATUS,
    DirectTransport,
    HTTPFailure,
    SDKTransport,
)
from retro_ray.safe_text import sanitize_text

logger = logging.getLogger(__name__)

PLACEHOLDER_API_KEY = "EMPTY"
"""Sent when the key variable is unset: local servers (vLLM, our Serve app) need no key, but the
SDK refuses to start without one."""

MAX_BACKOFF_S = 30.0
"""Upper bound of one backoff delay, whatever the attempt number or a Retry-After header say."""

_SETUP_STATUS = frozenset({401, 403, 404})
"""4xx statuses about the endpoint's setup (key, permission, model name), not the request: every
request would get them, so they stop the run (``EndpointError``) instead of failing episodes."""

REJECTIONS_BEFORE_OUTAGE = 16
"""Rejected requests in a row (no success between) after which the cause is taken to be the
setup, not the input (a parameter the server refuses, a context window smaller than every
prompt): the client raises ``EndpointError`` and the run stops instead of failing every episode."""

Prompt = str | list[ChatMessage]
"""A flat prompt, or a conversation for the chat API."""

REASON_CHARS = 160
"""How much of a provider's error message an error or log line quotes."""


class OpenAIClient:
    """Calls one OpenAI-compatible endpoint; implements the ``LLMClient`` protocol.

    One request per prompt, all prompts concurrently, at most ``max_concurrency`` in flight.
    ``usage`` accumulates tokens, cost, latency and retries of every call.
    """

    def __init__(self, config: EndpointConfig, *, request_token_ids: bool = False) -> None:
        """``request_token_ids`` asks the server for the sampled token ids (vLLM's
        ``return_token_ids`` extra parameter). Off by default: cloud APIs reject unknown
        parameters. Token ids a server returns unasked are used either way."""
        self.config = config
        self.request_token_ids = request_token_ids
        self.usage = UsageTotals()
        self.rejected_in_row = 0
        self._api_key = read_secret(config.api_key_env) or PLACEHOLDER_API_KEY
        # The transport and the semaphore belong to one event loop; both are (re)made lazily
        # for the loop that is running, so a client survives successive ``asyncio.run`` calls.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._transport: DirectTransport | SDKTransport | None = None
        self._semaphore: asyncio.Semaphore | None = None

    @classmethod
    def from_config(cls, config: EndpointConfig, **kwargs: Any) -> OpenAIClient:
        return cls(config, **kwargs)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(base_url={self.config.base_url!r}, "
            f"model={self.config.model!r}, api={self.config.api!r})"
        )

    # ----------------------------------------------------------------------------------------
    # Public API
    # ----------------------------------------------------------------------------------------

    async def generate(
        self, prompts: Sequence[Prompt], sampling: SamplingParams, *, chat: bool = False
    ) -> list[Completion]:
        """One completion per prompt, in order. Raises ``EndpointError`` if any request fails
        for good (the other requests are cancelled). With ``config.api: chat`` (or ``chat``) a
        text prompt goes as one user message and a list of turns as those turns."""
        self._bind_loop()
        chat = chat or self.config.api == "chat"
        tasks = [asyncio.ensure_future(self._generate_one(p, sampling, chat)) for p in prompts]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            # A failed (or cancelled) batch must not leave requests retrying in the background.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def chat(
        self, conversations: Sequence[Sequence[ChatMessage]], sampling: SamplingParams
    ) -> list[Completion]:
        """One reply per conversation through ``/chat/completions``, whatever ``config.api``
        says (the turns go to the server as they are; the server applies the model's chat
        template). Retries, errors and accounting as ``generate``."""
        return await self.generate([list(c) for c in conversations], sampling, chat=True)

    async def aclose(self) -> None:
        """Close the HTTP connections of the current event loop's transport."""
        transport, self._transport, self._loop, self._semaphore = self._transport, None, None, None
        if transport is not None:
            with contextlib.suppress(RuntimeError):  # its event loop is gone: nothing to close
                await transport.aclose()

    # ----------------------------------------------------------------------------------------
    # Internals
    # ----------------------------------------------------------------------------------------

    def _bind_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is loop and self._transport is not None:
            return
        self._loop = loop
        self._semaphore = asyncio.Semaphore(self.config.max_concurrency)
        kind = DirectTransport if self.config.http_transport == "direct" else SDKTransport
        self._transport = kind(self.config, self._api_key)

    async def _generate_one(
        self, prompt: Prompt, sampling: SamplingParams, chat: bool
    ) -> Completion:
        assert self._semaphore is not None
        async with self._semaphore:
            completion = await self._with_retries(prompt, sampling, chat)
        self.usage.add(completion)
        return completion

    async def _with_retries(
        self, prompt: Prompt, sampling: SamplingParams, chat: bool
    ) -> Completion:
        cfg = self.config
        attempts = 0
        while True:
            attempts += 1
            try:
                completion = await self._request(prompt, sampling, chat)
                self.rejected_in_row = 0
                return completion
            except HTTPFailure as failure:
                if not failure.retryable or attempts > cfg.max_retries:
                    # from None: nothing of the transport's exception (or the raw body) leaks.
                    raise self._failure(failure, attempts, self._model_name(sampling)) from None
                delay = self._backoff(attempts - 1, failure)
                self.usage.retries += 1
                logger.warning(
                    "endpoint %s (model %s): %s; retry %d/%d in %.2fs",
                    cfg.base_url,
                    self._model_name(sampling),
                    self._scrub(_describe(failure)),  # short, never the raw body
                    attempts,
                    cfg.max_retries,
                    delay,
                )
                await asyncio.sleep(delay)

    def _body(self, prompt: Prompt, sampling: SamplingParams, chat: bool) -> dict[str, Any]:
        """The request body of ``/completions`` or ``/chat/completions``."""
        body: dict[str, Any] = {
            "model": self._model_name(sampling),
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
        }
        if chat:
            body["messages"] = (
                [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
            )
        elif isinstance(prompt, str):
            body["prompt"] = prompt
        else:
            raise TypeError("a conversation (list of turns) needs the chat API (chat=True)")
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        if sampling.logprobs:
            body["logprobs"] = True if chat else 1
        if self.request_token_ids:
            body["return_token_ids"] = True
        return body

    async def _request(self, prompt: Prompt, sampling: SamplingParams, chat: bool) -> Completion:
        assert self._transport is not None
        cfg = self.config
        body = self._body(prompt, sampling, chat)
        start = time.perf_counter()
        response = await self._transport.post("/chat/completions" if chat else "/completions", body)
        latency = time.perf_counter() - start
        try:
            choice = response["choices"][0]
            text, logprobs = _chat_text(choice) if chat else _completion_text(choice)
            usage = response.get("usage") or {}
            prompt_tokens = int(usage.get("prompt_tokens") or 0)
            completion_tokens = int(usage.get("completion_tokens") or 0)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError):
            raise HTTPFailure(200, reason="a body without choices", malformed=True) from None
        return Completion(
            text=sanitize_text(text),  # a lone surrogate in the JSON must not reach Parquet
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            token_ids=_int_list(choice.get("token_ids")),
            prompt_token_ids=_int_list(choice.get("prompt_token_ids"))
            or _int_list(response.get("prompt_token_ids")),
            adapter_version=_adapter_version(response),
            logprobs=logprobs if sampling.logprobs else None,
            finish_reason=choice.get("finish_reason"),
            model=response.get("model") or body["model"],
            latency_s=latency,
            cost=(
                prompt_tokens * cfg.price_per_1m_prompt_tokens
                + completion_tokens * cfg.price_per_1m_completion_tokens
            )
            / 1e6,
        )

    def _model_name(self, sampling: SamplingParams) -> str:
        """Our Serve app serves each adapter (or alias) under its own model name."""
        return sampling.adapter or self.config.model

    def _backoff(self, retry_index: int, failure: HTTPFailure) -> float:
        """Exponential backoff with jitter, at least any Retry-After the server sent, capped."""
        delay = self.config.backoff_s * (2**retry_index) * random.uniform(0.5, 1.5)
        if failure.retry_after:
            with contextlib.suppress(ValueError):  # an HTTP date: keep our own delay
                delay = max(delay, float(failure.retry_after))
        return min(delay, MAX_BACKOFF_S)

    def _failure(
        self, failure: HTTPFailure, attempts: int, model: str
    ) -> EndpointError | RequestRejected:
        """``RequestRejected`` for a refusal of this request, else ``EndpointError``; either
        names the endpoint, the model, the status and a short reason."""
        cfg = self.config
        status, kind = failure.status, _error_kind(failure)
        rejects = _rejects_the_request(status)
        if rejects:
            self.rejected_in_row += 1
        if rejects and self.rejected_in_row < REJECTIONS_BEFORE_OUTAGE:
            message = (
                f"LLM endpoint {cfg.base_url} (model {model!r}) rejected the request: "
                f"{_describe(failure)}"
            )
            return RequestRejected(self._scrub(message), status=status, kind=kind)
        if failure.malformed:
            hint = f"is {cfg.base_url} the root of an OpenAI-compatible API (ending in /v1)?"
        elif status is None:
            hint = f"is the server running at {cfg.base_url} and reachable from here?"
        elif status in (401, 403):
            hint = f"is the API key in ${cfg.api_key_env} set and valid for this endpoint?"
        elif status == 404:
            hint = f"does the server at {cfg.base_url} serve the model (see GET /models)?"
        elif 400 <= status < 500:
            hint = "the server rejected every request: check the sampling parameters and model"
        else:
            hint = f"is the server at {cfg.base_url} healthy (check its logs)?"
        why = "gave up after" if failure.retryable else "not retried;"
        if rejects:
            why = f"{self.rejected_in_row} requests in a row rejected, the last after"
        message = (
            f"LLM endpoint {cfg.base_url} (model {model!r}) failed: "
            f"{_describe(failure)}; {why} {attempts} attempt{'s' if attempts != 1 else ''}. "
            f"Hint: {hint}"
        )
        return EndpointError(self._scrub(message), status=status, kind=kind)

    def _scrub(self, text: str) -> str:
        """Never let the key through, even if a server echoes it back in an error body."""
        if self._api_key and self._api_key != PLACEHOLDER_API_KEY:
            text = text.replace(self._api_key, "***")
        return text


def _completion_text(choice: dict[str, Any]) -> tuple[str, list[float] | None]:
    logprobs = (choice.get("logprobs") or {}).get("token_logprobs")
    # The first token of an echoed prompt has a null log-prob; we never echo.
    values = [float(x) for x in logprobs if x is not None] if logprobs is not None else None
    return choice.get("text") or "", values


def _chat_text(choice: dict[str, Any]) -> tuple[str, list[float] | None]:
    content = (choice.get("logprobs") or {}).get("content")
    values = [float(t["logprob"]) for t in content] if content is not None else None
    return (choice.get("message") or {}).get("content") or "", values


def _rejects_the_request(status: int | None) -> bool:
    """A 4xx about this request (not retried, not about the endpoint's setup)."""
    return (
        status is not None
        and 400 <= status < 500
        and status not in RETRYABLE_STATUS
        and status not in _SETUP_STATUS
    )


def _describe(failure: HTTPFailure) -> str:
    """``HTTP 400 invalid_request_error (the provider's message, cut short)``: from the parsed
    error object, never the raw body."""
    if failure.malformed:
        return f"HTTP {failure.status} with {failure.reason}"
    if failure.status is None:
        return "timeout" if failure.timeout else "connection error"
    detail = (failure.error or {}).get("message")
    if not isinstance(detail, str) or not detail.strip():
        detail = failure.reason
    return f"HTTP {failure.status} {_error_kind(failure)} ({_shorten(detail, REASON_CHARS)})"


def _error_kind(failure: HTTPFailure) -> str:
    """The provider's error type (``invalid_request_error``) when it sent one, else ours."""
    kind = (failure.error or {}).get("type")
    if isinstance(kind, str) and kind.isidentifier() and len(kind) <= 64:
        return kind
    if failure.malformed:
        return "malformed_response"
    if failure.status is None:
        return "timeout" if failure.timeout else "connection_error"
    return f"http_{failure.status}"


def _shorten(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _int_list(ids: Any) -> list[int] | None:
    """Token ids as vLLM (``return_token_ids``) and our Serve app return them, else None."""
    if not isinstance(ids, list):
        return None
    try:
        return [int(i) for i in ids]
    except (TypeError, ValueError):
        return None


def _adapter_version(response: dict[str, Any]) -> int | None:
    """The registry version of the adapter that answered (our Serve app's ``adapter_version``
    extension; None from other servers and for models outside the registry)."""
    value = response.get("adapter_version")
    return value if isinstance(value, int) and not isinstance(value, bool) else None
