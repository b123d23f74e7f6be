"""How ``OpenAIClient`` moves a JSON body to an OpenAI-compatible endpoint and back, and the one
failure type both transports raise (``EndpointConfig.http_transport``):

* :class:`DirectTransport` (``direct``, the default): the wire protocol on a plain ``aiohttp``
  session, the least CPU per call (``benchmarks.rollout``);
* :class:`SDKTransport` (``aiohttp`` / ``httpx``): the official SDK's documented low-level
  ``AsyncOpenAI.post`` on that HTTP client.

Retries, backoff and the errors a caller sees are ``OpenAIClient``'s, decided from
:class:`HTTPFailure` whatever the transport.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import httpx2
import openai
import yarl
from openai import AsyncOpenAI

from retro_ray.config import EndpointConfig

RETRYABLE_STATUS = frozenset({408, 409, 429})
"""4xx statuses worth retrying (timeout, conflict, rate limit); every 5xx is retried too."""

KEEPALIVE_S = 60.0
"""How long an idle connection to the endpoint is kept open for the next request."""


class HTTPFailure(Exception):
    """A request that got no usable answer, whatever the transport: an HTTP error status with the
    provider's error object and any Retry-After, no answer at all (``status`` None: a timeout or a
    connection error), or a body that is not an OpenAI response (``malformed``)."""

    def __init__(
        self,
        status: int | None,
        *,
        error: dict[str, Any] | None = None,
        retry_after: str | None = None,
        reason: str = "",
        timeout: bool = False,
        malformed: bool = False,
    ) -> None:
        super().__init__(status)
        self.status, self.error, self.retry_after = status, error, retry_after
        self.reason, self.timeout, self.malformed = reason, timeout, malformed

    @property
    def retryable(self) -> bool:
        if self.malformed:
            return False
        return self.status is None or self.status >= 500 or self.status in RETRYABLE_STATUS


class DirectTransport:
    """POSTs JSON bodies to the endpoint on one ``aiohttp`` session: keep-alive connections up to
    ``max_concurrency``, the key in an ``Authorization`` header, a proxy from the environment (as
    the SDK's clients take one), read once here: a session that trusts the environment reads it
    and ``~/.netrc`` again for every request, on the event loop's thread pool, where a burst of
    requests queued behind each other and behind the experience log's writes."""

    def __init__(self, config: EndpointConfig, api_key: str) -> None:
        self.base_url = config.base_url.rstrip("/")
        proxy, proxy_auth = env_proxy(self.base_url)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=config.max_concurrency, keepalive_timeout=KEEPALIVE_S
            ),
            timeout=aiohttp.ClientTimeout(total=config.timeout_s),
            headers={"Authorization": f"Bearer {api_key}", "Accept": "application/json"},
            proxy=proxy,
            proxy_auth=proxy_auth,
        )

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        try:
            async with self.session.post(self.base_url + path, data=data, headers=headers) as r:
                content = await r.read()
                status, reason, retry_after = r.status, r.reason or "", r.headers.get("retry-after")
        except TimeoutError:  # aiohttp's timeouts are TimeoutErrors (some also ClientErrors)
            raise HTTPFailure(None, timeout=True) from None
        except aiohttp.ClientError:
            raise HTTPFailure(None) from None
        if status >= 400:
            raise HTTPFailure(
                status, error=_error_object(content), retry_after=retry_after, reason=reason
            )
        return _json_object(content)

    async def aclose(self) -> None:
        await self.session.close()


def env_proxy(url: str) -> tuple[yarl.URL | None, aiohttp.BasicAuth | None]:
    """The proxy (and its credentials) that ``HTTP(S)_PROXY``/``NO_PROXY`` name for ``url``, as
    aiohttp's ``trust_env`` would pick it; ``(None, None)`` when there is none."""
    try:
        return aiohttp.helpers.get_env_proxy_for_url(yarl.URL(url))
    except LookupError:
        return None, None


class SDKTransport:
    """POSTs JSON bodies through the official SDK's ``AsyncOpenAI.post`` (its own retries off) on
    the SDK's HTTP client for ``config.http_transport``, pooling as many keep-alive connections as
    requests may be in flight (the SDK's default pool keeps 100 alive of 1000: above 100 in
    flight, every extra request opened and closed a connection of its own)."""

    def __init__(self, config: EndpointConfig, api_key: str) -> None:
        limits = httpx2.Limits(
            max_connections=config.max_concurrency,
            max_keepalive_connections=config.max_concurrency,
            keepalive_expiry=KEEPALIVE_S,
        )
        http_client = (
            openai.DefaultAioHttpClient(timeout=config.timeout_s, limits=limits)
            if config.http_transport == "aiohttp"
            else openai.DefaultAsyncHttpxClient(timeout=config.timeout_s, limits=limits)
        )
        self.client = AsyncOpenAI(
            api_key=api_key,
            base_url=config.base_url,
            timeout=config.timeout_s,
            max_retries=0,  # our own loop retries, logs and counts
            http_client=http_client,
        )

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = await self.client.post(path, body=body, cast_to=httpx2.Response)
        except openai.APIStatusError as exc:
            raise HTTPFailure(
                exc.status_code,
                error=exc.body if isinstance(exc.body, dict) else None,
                retry_after=exc.response.headers.get("retry-after"),
                reason=exc.response.reason_phrase,
            ) from None
        except openai.APITimeoutError:
            raise HTTPFailure(None, timeout=True) from None
        except openai.APIConnectionError:
            raise HTTPFailure(None) from None
        return _json_object(response.content)

    async def aclose(self) -> None:
        await self.client.close()


def _json_object(content: bytes) -> dict[str, Any]:
    try:
        value = json.loads(content)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise HTTPFailure(200, reason="a body that is not a JSON object", malformed=True)
    return value


def _error_object(content: bytes) -> dict[str, Any] | None:
    """The provider's error object (``{"error": {...}}``, as the SDK reads it), if any."""
    try:
        value = json.loads(content)
    except ValueError:
        return None
    if isinstance(value, dict):
        error = value.get("error", value)
        return error if isinstance(error, dict) else None
    return None
