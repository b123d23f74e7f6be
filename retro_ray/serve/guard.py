"""What a replica is told at start (``ReplicaSettings``), the engine it builds, and the ASGI guard
that runs before any route: bearer token and request size.

The token never travels: the launcher passes its sha256, and the guard compares digests in
constant time. Both sides strip whitespace (a token read from a file ends in a newline). The
body is read up to ``max_request_bytes`` before FastAPI parses anything, so an oversized request
costs at most that much memory and is answered 413.

An app bound beyond loopback without a token would let anyone who reaches the port use it, so
:func:`serve_token_sha256` refuses to start it unless the operator opts in (``--insecure``).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
from dataclasses import dataclass
from typing import Any

from retro_ray.config.secrets import read_secret
from retro_ray.serve.openai_api import error_response

logger = logging.getLogger(__name__)

ASGIApp = Any


@dataclass(frozen=True)
class ReplicaSettings:
    backend: str  # "vllm" | "torch"
    model_dir: str
    model_name: str
    adapter_name: str
    registry_root: str
    controller_name: str
    namespace: str
    max_lora_rank: int
    max_loras: int
    max_tokens_limit: int
    max_request_bytes: int
    max_context: int  # prompt + completion tokens the engine takes
    token_sha256: str | None  # None: no bearer token required
    cpu_threads: int = 1
    kv_cache_gib: int = 1
    gpu_memory_utilization: float = 0.9
    dtype: str | None = None
    max_model_len: int | None = None
    instruction: str = ""  # of reflection prompts (/v1/reflect)
    trajectory_max_chars: int = 1600
    reflection_max_chars: int = 300


def make_engine(settings: ReplicaSettings) -> Any:
    if settings.backend == "torch":
        from retro_ray.llm.torch_backend import TorchBackend

        return TorchBackend(settings.model_dir, name=settings.model_name)
    from retro_ray.llm.vllm_backend import VLLMBackend

    return VLLMBackend(
        settings.model_dir,
        name=settings.model_name,
        max_lora_rank=settings.max_lora_rank,
        max_loras=settings.max_loras,
        max_model_len=settings.max_model_len,
        cpu_threads=settings.cpu_threads,
        kv_cache_gib=settings.kv_cache_gib,
        gpu_memory_utilization=settings.gpu_memory_utilization,
        dtype=settings.dtype,
    )


def token_digest(token: str | None) -> str | None:
    """sha256 of the token without surrounding whitespace; None for no (or a blank) token."""
    token = (token or "").strip()
    return hashlib.sha256(token.encode()).hexdigest() if token else None


class InsecureBind(ValueError):
    """The Serve app would listen beyond loopback with no bearer token required."""


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1); a wildcard such as
    0.0.0.0, any other address or host name is reachable from elsewhere."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def serve_token_sha256(host: str, api_key_env: str, insecure: bool = False) -> str | None:
    """The digest of the Serve app's bearer token (``$api_key_env``, stripped), checked against
    the address the app binds: beyond loopback a token is required, else ``InsecureBind``,
    unless ``insecure`` says the operator wants an open endpoint (then a warning)."""
    digest = token_digest(read_secret(api_key_env))
    if digest is None and not is_loopback(host):
        if not insecure:
            raise InsecureBind(
                f"serve.host={host} is reachable from other machines but ${api_key_env} is unset "
                f"or blank, so anyone could call the app: set {api_key_env} to a bearer token, "
                "or bind serve.host=127.0.0.1, or pass --insecure to serve it open on purpose"
            )
        logger.warning(
            "serving on %s without a bearer token (--insecure): anyone who reaches the port "
            "can use it",
            host,
        )
    return digest


class _GuardSettings:
    """Per-process limits, set by the replica's constructor (the middleware is built by
    FastAPI before the replica exists, so it reads them from here)."""

    def __init__(self) -> None:
        self.token_sha256: str | None = None
        self.max_request_bytes = 1_000_000

    def configure(self, token_sha256: str | None, max_request_bytes: int) -> None:
        self.token_sha256, self.max_request_bytes = token_sha256, max_request_bytes


GUARD = _GuardSettings()
OPEN_PATHS = ("/healthz",)


class RequestGuard:
    """Pure ASGI middleware: 401 without the right bearer token, 413 above the size limit."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers", [])}
        needs_token = GUARD.token_sha256 and not scope["path"].endswith(OPEN_PATHS)
        if needs_token and not self._authorized(headers.get("authorization", b"")):
            reply = error_response(
                401,
                "missing or invalid bearer token",
                code="invalid_api_key",
                headers={"www-authenticate": "Bearer"},
            )
            await reply(scope, receive, send)
            return
        limit = GUARD.max_request_bytes
        declared = headers.get("content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await self._too_large(scope, receive, send, limit)
            return
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > limit:
                await self._too_large(scope, receive, send, limit)
                return
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    @staticmethod
    def _authorized(header: bytes) -> bool:
        scheme, _, token = header.decode("latin-1").partition(" ")
        digest = token_digest(token.strip()) or ""
        expected = GUARD.token_sha256 or ""
        return scheme.lower() == "bearer" and hmac.compare_digest(digest, expected)

    @staticmethod
    async def _too_large(scope: Any, receive: Any, send: Any, limit: int) -> None:
        reply = error_response(413, f"request body exceeds {limit} bytes", code="request_too_large")
        await reply(scope, receive, send)
