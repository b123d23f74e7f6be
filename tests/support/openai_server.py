"""A scripted OpenAI-compatible HTTP server for tests (a fixture, not a product feature).

Standard library only: a ``ThreadingHTTPServer`` on loopback in a background thread, port chosen by
the OS. Answers ``GET /v1/models``, ``POST /v1/completions`` and ``POST /v1/chat/completions`` in
the shapes of OpenAI's API, so the official ``openai`` client and our ``OpenAIClient`` can be tested
end to end without a model. Every request is recorded (``requests``; a chat request's turns as
``RecordedRequest.messages``, all of them in order by ``conversations()``). The text comes from
``responder(prompt)`` (a chat request's turns joined by newlines); ``stop`` strings and
``max_tokens`` are applied to it with whitespace tokens. ``fail_next`` injects HTTP errors and
``stop()`` makes the endpoint unreachable, to exercise retries and ``EndpointError``;
``reject(prompt)`` (a message, or None to answer) refuses chosen prompts with a 400, as a server
does for a prompt past its context window.

Example::

    with OpenAIServer(lambda prompt: "> go[north]") as server:
        cfg = EndpointConfig(base_url=server.base_url)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Responder = Callable[[str], str]

TOKEN_LOGPROB = -0.1
"""Log-prob reported for every sampled token when log-probs are asked for."""

FAKE_VOCAB_SIZE = 32000


@dataclass
class RecordedRequest:
    """One request as the server saw it, for assertions (headers keep their original names)."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None

    @property
    def messages(self) -> list[dict[str, Any]] | None:
        """The turns of a chat request as received (role and content each), else None."""
        if not isinstance(self.body, dict) or "messages" not in self.body:
            return None
        return [dict(m) for m in self.body["messages"]]

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == lowered), None)


@dataclass
class _Fault:
    remaining: int
    status: int
    message: str
    headers: dict[str, str] = field(default_factory=dict)


def tokenize(text: str) -> list[str]:
    """Whitespace tokens that keep their leading whitespace, so ``"".join`` gives the text back."""
    return re.findall(r"\s*\S+", text)


def count_tokens(text: str) -> int:
    return len(tokenize(text))


def fake_token_id(token: str) -> int:
    """A stable pseudo token id (the fixture has no vocabulary)."""
    return int(hashlib.sha256(token.encode()).hexdigest()[:8], 16) % FAKE_VOCAB_SIZE


def apply_limits(text: str, stop: list[str], max_tokens: int | None) -> tuple[str, str]:
    """Cut ``text`` at the first stop string (excluded, as OpenAI does) and to ``max_tokens``.
    Returns the text and the finish reason (``stop`` or ``length``)."""
    cuts = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    if cuts:
        text = text[: min(cuts)]
    tokens = tokenize(text)
    if max_tokens is not None and len(tokens) > max_tokens:
        return "".join(tokens[:max_tokens]), "length"
    return text, "stop"


class OpenAIServer:
    """The fixture server. ``base_url`` is ``http://127.0.0.1:PORT/v1``; the port survives
    ``stop()`` / ``start()``. Thread-safe counters: ``requests``, ``in_flight``, ``max_in_flight``.
    """

    def __init__(
        self,
        responder: Responder = lambda prompt: "ok",
        *,
        models: tuple[str, ...] = ("actor",),
        delay_s: float = 0.0,
        host: str = "127.0.0.1",
        reject: Callable[[str], str | None] | None = None,
    ) -> None:
        self.responder = responder
        self.reject = reject
        self.models = models
        self.delay_s = delay_s  # added to every answer: makes concurrency observable
        self.host = host
        self.port = 0
        self.requests: list[RecordedRequest] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def running(self) -> bool:
        return self._httpd is not None

    def start(self) -> OpenAIServer:
        """Listen (on the same port as before after a ``stop()``) and serve in a daemon thread."""
        if self._httpd is not None:
            return self
        httpd = ThreadingHTTPServer((self.host, self.port), _make_handler(self))
        httpd.daemon_threads = True
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening: further connections are refused."""
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- scripting ---------------------------------------------------------------------------

    def fail_next(
        self,
        n: int,
        status: int = 500,
        message: str = "injected failure",
        headers: dict[str, str] | None = None,
    ) -> None:
        """The next ``n`` requests (any route) answer ``status`` with an OpenAI error body."""
        with self._lock:
            self._faults.append(_Fault(n, status, message, dict(headers or {})))

    def conversations(self) -> list[list[dict[str, Any]]]:
        """The turns of every chat request received so far, in arrival order."""
        with self._lock:
            recorded = list(self.requests)
        return [m for m in (r.messages for r in recorded) if m is not None]

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self._faults.clear()
            self.max_in_flight = self.in_flight

    def _take_fault(self) -> _Fault | None:
        with self._lock:
            while self._faults and self._faults[0].remaining <= 0:
                self._faults.pop(0)
            if not self._faults:
                return None
            self._faults[0].remaining -= 1
            return self._faults[0]

    def _enter(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    # -- answers -----------------------------------------------------------------------------

    def _models_body(self) -> dict[str, Any]:
        created = int(time.time())
        return {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": created, "owned_by": "retro_ray-tests"}
                for m in self.models
            ],
        }

    def _rejection(self, req: dict[str, Any], chat: bool) -> str | None:
        if self.reject is None:
            return None
        return next((m for m in map(self.reject, _prompts_of(req, chat)) if m), None)

    def _completion_body(self, req: dict[str, Any], chat: bool) -> dict[str, Any]:
        prompts = _prompts_of(req, chat)
        stop = req.get("stop") or []
        stop = [stop] if isinstance(stop, str) else list(stop)
        max_tokens = req.get("max_tokens", req.get("max_completion_tokens"))
        want_logprobs = bool(req.get("logprobs"))
        want_ids = bool(req.get("return_token_ids"))

        choices = []
        prompt_tokens = completion_tokens = 0
        for index, prompt in enumerate(prompts):
            text, finish = apply_limits(self.responder(prompt), stop, max_tokens)
            tokens = tokenize(text)
            prompt_tokens += count_tokens(prompt)
            completion_tokens += len(tokens)
            choice: dict[str, Any] = {"index": index, "finish_reason": finish, "logprobs": None}
            if chat:
                choice["message"] = {"role": "assistant", "content": text, "refusal": None}
                if want_logprobs:
                    choice["logprobs"] = {
                        "content": [
                            {
                                "token": t,
                                "logprob": TOKEN_LOGPROB,
                                "bytes": list(t.encode()),
                                "top_logprobs": [],
                            }
                            for t in tokens
                        ],
                        "refusal": None,
                    }
            else:
                choice["text"] = text
                if want_logprobs:
                    offsets, pos = [], 0
                    for t in tokens:
                        offsets.append(pos)
                        pos += len(t)
                    choice["logprobs"] = {
                        "tokens": tokens,
                        "token_logprobs": [TOKEN_LOGPROB] * len(tokens),
                        "top_logprobs": [{t: TOKEN_LOGPROB} for t in tokens],
                        "text_offset": offsets,
                    }
            if want_ids:
                choice["token_ids"] = [fake_token_id(t) for t in tokens]
            choices.append(choice)

        return {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": req.get("model", self.models[0] if self.models else ""),
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }


def _prompts_of(req: dict[str, Any], chat: bool) -> list[str]:
    if chat:
        messages = req.get("messages") or []
        return ["\n".join(_content_text(m.get("content")) for m in messages)]
    raw = req.get("prompt", "")
    return [raw] if isinstance(raw, str) else [str(p) for p in raw]


def _content_text(content: Any) -> str:
    """Chat content is a string or a list of parts (``{"type": "text", "text": ...}``)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _error_body(status: int, message: str) -> dict[str, Any]:
    kind = "invalid_request_error" if 400 <= status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": None, "code": status}}


def _make_handler(server: OpenAIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # HTTP/1.0: one request per connection, so that a stopped server has no kept-alive
        # connection left that could still answer.
        protocol_version = "HTTP/1.0"

        def log_message(self, format: str, *args: Any) -> None:  # quiet test output
            pass

        def do_GET(self) -> None:
            self._handle(None)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                self._send(400, _error_body(400, "request body is not valid JSON"))
                return
            self._handle(body if isinstance(body, dict) else {})

        def _handle(self, body: dict[str, Any] | None) -> None:
            path = self.path.split("?", 1)[0].rstrip("/")
            server._enter(RecordedRequest(self.command, path, dict(self.headers.items()), body))
            try:
                status, payload, headers = self._answer(path, body)
            finally:
                # In flight until the answer is ready, not until its bytes are written: a client
                # whose slot frees when it reads the answer may send its next request before this
                # thread returns from the write, and that is not a request over its limit.
                server._leave()
            # The client may have given up (its timeout): then there is nothing to answer.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self._send(status, payload, headers)

        def _answer(
            self, path: str, body: dict[str, Any] | None
        ) -> tuple[int, dict[str, Any], dict[str, str]]:
            if server.delay_s:
                time.sleep(server.delay_s)
            fault = server._take_fault()
            if fault is not None:
                return fault.status, _error_body(fault.status, fault.message), fault.headers
            try:
                chat = path == "/v1/chat/completions"
                if self.command == "POST" and (chat or path == "/v1/completions"):
                    rejection = server._rejection(body or {}, chat)
                    if rejection:
                        return 400, _error_body(400, rejection), {}
                if self.command == "GET" and path == "/v1/models":
                    return 200, server._models_body(), {}
                if self.command == "POST" and path == "/v1/completions":
                    return 200, server._completion_body(body or {}, chat=False), {}
                if self.command == "POST" and path == "/v1/chat/completions":
                    return 200, server._completion_body(body or {}, chat=True), {}
            except Exception as exc:  # a broken responder is a 500, as on a real server
                return 500, _error_body(500, f"responder failed: {exc!r}"), {}
            return 404, _error_body(404, f"no route {self.command} {path}"), {}

        def _send(
            self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
        ) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

    return Handler
