"""An ``LLMClient`` for any OpenAI-compatible endpoint (a cloud API, a vLLM server, our Serve app).

Built on the official ``openai`` SDK's ``AsyncOpenAI`` with the SDK's own retries switched off: we
retry ourselves so that every retry is logged (endpoint, status, attempt), counted in
``UsageTotals.retries`` and, when retries run out, turned into one ``EndpointError`` that names the
endpoint and says what to check. A run must stop on a dead endpoint, never count it as a failed
episode.

A refusal of one request for what it holds (400, 413, 422 and the other 4xx that are neither
retried, 408/409/429, nor about the endpoint's setup, 401/403/404) is not an outage: it raises
``RequestRejected`` at once, and the trial loop records that episode as failed with the reason.

The API key is read from the environment variable named in the config and never appears in logs,
error messages or ``repr``. Errors are raised ``from None`` and carry the status, the error's type
and a short excerpt of the provider's message (key scrubbed), never the SDK exception whose text
is the provider's whole raw body (which may echo the prompt or the key).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Sequence
from typing import Any

import httpx2
import openai
from openai import AsyncOpenAI

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
from retro_ray.safe_text import sanitize_text

logger = logging.getLogger(__name__)

PLACEHOLDER_API_KEY = "EMPTY"
"""Sent when the key variable is unset: local servers (vLLM, our Serve app) need no key, but the
SDK refuses to start without one."""

MAX_BACKOFF_S = 30.0
"""Upper bound of one backoff delay, whatever the attempt number or a Retry-After header say."""

_RETRYABLE_STATUS = frozenset({408, 409, 429})
"""4xx statuses worth retrying (timeout, conflict, rate limit); every 5xx is retried too."""

_SETUP_STATUS = frozenset({401, 403, 404})
"""4xx statuses about the endpoint's setup (key, permission, model name), not the request: every
request would get them, so they stop the run (``EndpointError``) instead of failing episodes."""

REJECTIONS_BEFORE_OUTAGE = 16
"""Rejected requests in a row (no success between) after which the cause is taken to be the
setup, not the input (a parameter the server refuses, a context window smaller than every
prompt): the client raises ``EndpointError`` and the run stops instead of failing every episode."""

Prompt = str | list[ChatMessage]
"""A flat prompt, or a conversation for the chat API."""

KEEPALIVE_S = 60.0
"""How long an idle connection to the endpoint is kept open for the next request."""

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
        # The SDK client and the semaphore belong to one event loop; both are (re)made lazily
        # for the loop that is running, so a client survives successive ``asyncio.run`` calls.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: AsyncOpenAI | None = None
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
        """Close the HTTP connections of the current event loop's SDK client."""
        client, self._client, self._loop, self._semaphore = self._client, None, None, None
        if client is not None:
            with contextlib.suppress(RuntimeError):  # its event loop is gone: nothing to close
                await client.close()

    # ----------------------------------------------------------------------------------------
    # Internals
    # ----------------------------------------------------------------------------------------

    def _bind_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is loop and self._client is not None:
            return
        self._loop = loop
        self._semaphore = asyncio.Semaphore(self.config.max_concurrency)
        self._client = AsyncOpenAI(
            api_key=self._api_key,
            base_url=self.config.base_url,
            timeout=self.config.timeout_s,
            max_retries=0,  # our own loop retries, logs and counts
            http_client=_http_client(self.config),
        )

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
            except (openai.APIStatusError, openai.APIConnectionError) as exc:
                status = exc.status_code if isinstance(exc, openai.APIStatusError) else None
                retryable = status is None or status >= 500 or status in _RETRYABLE_STATUS
                if not retryable or attempts > cfg.max_retries:
                    # from None: the SDK exception's text is the provider's raw body.
                    raise self._failure(
                        exc, status, attempts, retryable, self._model_name(sampling)
                    ) from None
                delay = self._backoff(attempts - 1, exc)
                self.usage.retries += 1
                logger.warning(
                    "endpoint %s (model %s): %s; retry %d/%d in %.2fs",
                    cfg.base_url,
                    self._model_name(sampling),
                    self._scrub(_describe(status, exc)),  # short, never the raw body
                    attempts,
                    cfg.max_retries,
                    delay,
                )
                await asyncio.sleep(delay)

    async def _request(self, prompt: Prompt, sampling: SamplingParams, chat: bool) -> Completion:
        assert self._client is not None
        cfg = self.config
        model = self._model_name(sampling)
        common: dict[str, Any] = {
            "model": model,
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
        }
        if sampling.stop:
            common["stop"] = list(sampling.stop)
        if sampling.seed is not None:
            common["seed"] = sampling.seed
        if self.request_token_ids:
            common["extra_body"] = {"return_token_ids": True}

        start = time.perf_counter()
        if chat:
            if sampling.logprobs:
                common["logprobs"] = True
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
            response: Any = await self._client.chat.completions.create(messages=messages, **common)
            choice = response.choices[0]
            text = choice.message.content or ""
            logprobs = None
            if choice.logprobs is not None and choice.logprobs.content is not None:
                logprobs = [float(t.logprob) for t in choice.logprobs.content]
        else:
            if not isinstance(prompt, str):
                raise TypeError("a conversation (list of turns) needs the chat API (chat=True)")
            if sampling.logprobs:
                common["logprobs"] = 1
            response = await self._client.completions.create(prompt=prompt, **common)
            choice = response.choices[0]
            text = choice.text or ""
            logprobs = None
            if choice.logprobs is not None and choice.logprobs.token_logprobs is not None:
                # The first token of an echoed prompt has a null log-prob; we never echo.
                logprobs = [float(x) for x in choice.logprobs.token_logprobs if x is not None]
        latency = time.perf_counter() - start

        usage = response.usage
        prompt_tokens = int(usage.prompt_tokens) if usage is not None else 0
        completion_tokens = int(usage.completion_tokens) if usage is not None else 0
        return Completion(
            text=sanitize_text(text),  # a lone surrogate in the JSON must not reach Parquet
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            token_ids=_token_ids(choice),
            prompt_token_ids=_prompt_token_ids(response, choice),
            adapter_version=_adapter_version(response),
            logprobs=logprobs if sampling.logprobs else None,
            finish_reason=choice.finish_reason,
            model=response.model or model,
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

    def _backoff(self, retry_index: int, exc: Exception) -> float:
        """Exponential backoff with jitter, at least any Retry-After the server sent, capped."""
        delay = self.config.backoff_s * (2**retry_index) * random.uniform(0.5, 1.5)
        if isinstance(exc, openai.APIStatusError):
            retry_after = exc.response.headers.get("retry-after")
            with contextlib.suppress(ValueError):  # an HTTP date: keep our own delay
                delay = max(delay, float(retry_after)) if retry_after else delay
        return min(delay, MAX_BACKOFF_S)

    def _failure(
        self, exc: Exception, status: int | None, attempts: int, retryable: bool, model: str
    ) -> EndpointError | RequestRejected:
        """``RequestRejected`` for a refusal of this request, else ``EndpointError``; either
        names the endpoint, the model, the status and a short reason."""
        cfg = self.config
        kind = _error_kind(exc)
        if _rejects_the_request(status):
            self.rejected_in_row += 1
        if _rejects_the_request(status) and self.rejected_in_row < REJECTIONS_BEFORE_OUTAGE:
            message = (
                f"LLM endpoint {cfg.base_url} (model {model!r}) rejected the request: "
                f"{_describe(status, exc)}"
            )
            return RequestRejected(self._scrub(message), status=status, kind=kind)
        if status is None:
            hint = f"is the server running at {cfg.base_url} and reachable from here?"
        elif status in (401, 403):
            hint = f"is the API key in ${cfg.api_key_env} set and valid for this endpoint?"
        elif status == 404:
            hint = f"does the server at {cfg.base_url} serve the model (see GET /models)?"
        elif status is not None and 400 <= status < 500:
            hint = "the server rejected every request: check the sampling parameters and model"
        else:
            hint = f"is the server at {cfg.base_url} healthy (check its logs)?"
        why = "gave up after" if retryable else "not retried;"
        if _rejects_the_request(status):
            why = f"{self.rejected_in_row} requests in a row rejected, the last after"
        message = (
            f"LLM endpoint {cfg.base_url} (model {model!r}) failed: "
            f"{_describe(status, exc)}; {why} {attempts} attempt{'s' if attempts != 1 else ''}. "
            f"Hint: {hint}"
        )
        return EndpointError(self._scrub(message), status=status, kind=kind)

    def _scrub(self, text: str) -> str:
        """Never let the key through, even if a server echoes it back in an error body."""
        if self._api_key and self._api_key != PLACEHOLDER_API_KEY:
            text = text.replace(self._api_key, "***")
        return text


def _http_client(config: EndpointConfig) -> Any:
    """The SDK's HTTP client for ``config.http_transport``, pooling as many keep-alive
    connections as requests may be in flight (the SDK's default pool keeps 100 alive of 1000:
    above 100 in flight, every extra request opened and closed a connection of its own)."""
    limits = httpx2.Limits(
        max_connections=config.max_concurrency,
        max_keepalive_connections=config.max_concurrency,
        keepalive_expiry=KEEPALIVE_S,
    )
    if config.http_transport == "aiohttp":
        return openai.DefaultAioHttpClient(timeout=config.timeout_s, limits=limits)
    return openai.DefaultAsyncHttpxClient(timeout=config.timeout_s, limits=limits)


def _rejects_the_request(status: int | None) -> bool:
    """A 4xx about this request (not retried, not about the endpoint's setup)."""
    return (
        status is not None
        and 400 <= status < 500
        and status not in _RETRYABLE_STATUS
        and status not in _SETUP_STATUS
    )


def _describe(status: int | None, exc: Exception) -> str:
    """``HTTP 400 invalid_request_error (the provider's message, cut short)``: from the parsed
    error object, never the SDK's message (``Error code: 400 - {...the whole body...}``)."""
    if status is None:
        kind = "timeout" if isinstance(exc, openai.APITimeoutError) else "connection error"
        return kind
    body = getattr(exc, "body", None)
    detail = body.get("message") if isinstance(body, dict) else None
    if not isinstance(detail, str) or not detail.strip():
        response = getattr(exc, "response", None)
        detail = getattr(response, "reason_phrase", "") or ""
    kind = _error_kind(exc)
    return f"HTTP {status} {kind} ({_shorten(detail, REASON_CHARS)})"


def _error_kind(exc: Exception) -> str:
    """The provider's error type (``invalid_request_error``) when it sent one, else the SDK's."""
    body = getattr(exc, "body", None)
    kind = body.get("type") if isinstance(body, dict) else None
    if isinstance(kind, str) and kind.isidentifier() and len(kind) <= 64:
        return kind
    return type(exc).__name__


def _shorten(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _token_ids(choice: Any, field: str = "token_ids") -> list[int] | None:
    """vLLM returns ``token_ids`` on each choice when asked (an extra field the SDK keeps)."""
    ids = getattr(choice, field, None)
    if ids is None and getattr(choice, "model_extra", None):
        ids = choice.model_extra.get(field)
    if not isinstance(ids, list):
        return None
    try:
        return [int(i) for i in ids]
    except (TypeError, ValueError):
        return None


def _prompt_token_ids(response: Any, choice: Any) -> list[int] | None:
    """The prompt's token ids as the engine saw them, where the server returns them with
    ``return_token_ids`` (vLLM and our Serve app: on each choice of a completion, on a chat
    response itself)."""
    return _token_ids(choice, "prompt_token_ids") or _token_ids(response, "prompt_token_ids")


def _adapter_version(response: Any) -> int | None:
    """The registry version of the adapter that answered (our Serve app's ``adapter_version``
    extension; None from other servers and for models outside the registry)."""
    extra = getattr(response, "model_extra", None) or {}
    value = extra.get("adapter_version")
    return value if isinstance(value, int) and not isinstance(value, bool) else None
