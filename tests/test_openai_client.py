"""OpenAIClient against the scripted fixture server: round trips, accounting, concurrency, retries,
errors that name the endpoint, and the API key kept out of messages and logs, through each
transport (every test runs on ``direct`` and on the SDK's ``aiohttp`` client). Fast; no Ray."""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from typing import Any

import openai
import pytest

from retro_ray.config import EndpointConfig
from retro_ray.llm import OpenAIClient as LazyOpenAIClient
from retro_ray.llm.base import EndpointError, LLMClient, RequestRejected, SamplingParams
from retro_ray.llm.openai_client import REJECTIONS_BEFORE_OUTAGE, OpenAIClient
from tests.support.ports import free_port

try:
    from tests.support.openai_server import OpenAIServer, apply_limits
except ModuleNotFoundError:  # tests/ is not a package: pytest put tests/ itself on sys.path
    from support.openai_server import OpenAIServer, apply_limits  # type: ignore[no-redef]

pytestmark = pytest.mark.timeout(60)

KEY_ENV = "TEST_KEY_ENV"
TRANSPORTS = ("direct", "aiohttp")


@pytest.fixture(params=TRANSPORTS, autouse=True)
def transport(request: pytest.FixtureRequest) -> str:
    """Every test of this module runs through each transport: ``make_config`` picks it up."""
    global CURRENT_TRANSPORT
    CURRENT_TRANSPORT = request.param
    return request.param


CURRENT_TRANSPORT = TRANSPORTS[0]


def echo_actor(prompt: str) -> str:
    """A scripted actor: answers with the prompt's last word, then chatter to cut."""
    last = prompt.split()[-1] if prompt.split() else "nothing"
    return f"> take[{last}]\nObservation: you took it and then some more words"


def make_config(server: OpenAIServer, **overrides: object) -> EndpointConfig:
    values: dict[str, object] = {
        "base_url": server.base_url,
        "model": "actor",
        "api_key_env": KEY_ENV,
        "timeout_s": 5.0,
        "max_retries": 3,
        "backoff_s": 0.001,
        "http_transport": CURRENT_TRANSPORT,
    }
    values.update(overrides)
    return EndpointConfig(**values)  # type: ignore[arg-type]


def run_generate(client: OpenAIClient, prompts: list[str], sampling: SamplingParams) -> list:
    async def main() -> list:
        try:
            return await client.generate(prompts, sampling)
        finally:
            await client.aclose()

    return asyncio.run(main())


@pytest.fixture
def server():
    with OpenAIServer(echo_actor) as srv:
        yield srv


# ------------------------------------------------------------------------------------------------
# Round trips
# ------------------------------------------------------------------------------------------------


def test_protocol_and_lazy_export():
    assert LazyOpenAIClient is OpenAIClient
    assert isinstance(OpenAIClient(EndpointConfig()), LLMClient)


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_round_trip_text_usage_cost_logprobs(server, api):
    cfg = make_config(
        server,
        api=api,
        price_per_1m_prompt_tokens=2.0,
        price_per_1m_completion_tokens=10.0,
    )
    client = OpenAIClient.from_config(cfg)
    sampling = SamplingParams(max_tokens=20, stop=("\nObservation",), logprobs=True, seed=7)
    prompts = ["find the key", "open the red box"]
    out = run_generate(client, prompts, sampling)

    assert [c.text for c in out] == ["> take[key]", "> take[box]"]
    for prompt, c in zip(prompts, out, strict=True):
        assert c.prompt_tokens == len(prompt.split())
        assert c.completion_tokens == 2
        assert c.finish_reason == "stop"
        assert c.model == "actor"
        assert c.logprobs == [-0.1, -0.1]
        assert c.latency_s > 0
        assert c.cost == pytest.approx((c.prompt_tokens * 2.0 + 2 * 10.0) / 1e6)
        assert c.token_ids is None  # not requested
    usage = client.usage
    assert usage.requests == 2
    assert usage.prompt_tokens == 3 + 4
    assert usage.completion_tokens == 4
    assert usage.cost == pytest.approx((7 * 2.0 + 4 * 10.0) / 1e6)
    assert usage.retries == 0
    assert len(usage.latencies_s) == 2

    body = server.requests[0].body
    assert body is not None
    assert body["model"] == "actor"
    assert body["max_tokens"] == 20 and body["seed"] == 7 and body["stop"] == ["\nObservation"]
    if api == "chat":
        assert server.requests[0].path == "/v1/chat/completions"
        assert body["messages"][0]["role"] == "user"
        assert body["messages"][0]["content"] in prompts
        assert body["logprobs"] is True
    else:
        assert server.requests[0].path == "/v1/completions"
        assert body["prompt"] in prompts
        assert body["logprobs"] == 1


def test_max_tokens_gives_length_and_no_logprobs_unless_asked(server):
    client = OpenAIClient(make_config(server))
    (c,) = run_generate(client, ["go"], SamplingParams(max_tokens=3))
    assert c.text == "> take[go]\nObservation:"
    assert c.finish_reason == "length"
    assert c.completion_tokens == 3
    assert c.logprobs is None
    assert "logprobs" not in (server.requests[0].body or {})
    assert "seed" not in (server.requests[0].body or {})


def test_adapter_replaces_model_name(server):
    client = OpenAIClient(make_config(server))
    (c,) = run_generate(client, ["x"], SamplingParams(adapter="retro-v3"))
    assert (server.requests[0].body or {})["model"] == "retro-v3"
    assert c.model == "retro-v3"


def test_token_ids_when_requested(server):
    client = OpenAIClient(make_config(server), request_token_ids=True)
    (c,) = run_generate(client, ["key"], SamplingParams(stop=("\n",)))
    assert (server.requests[0].body or {})["return_token_ids"] is True
    assert c.token_ids is not None and len(c.token_ids) == c.completion_tokens == 2
    assert all(isinstance(i, int) for i in c.token_ids)


def test_client_survives_successive_event_loops(server):
    client = OpenAIClient(make_config(server))
    for _ in range(2):  # a new loop each time: the SDK client and semaphore are rebound
        assert asyncio.run(client.generate(["a"], SamplingParams()))[0].text
    asyncio.run(client.aclose())
    assert client.usage.requests == 2


# ------------------------------------------------------------------------------------------------
# Concurrency
# ------------------------------------------------------------------------------------------------


def test_concurrency_bounded_by_max_concurrency():
    with OpenAIServer(echo_actor, delay_s=0.1) as server:
        client = OpenAIClient(make_config(server, max_concurrency=3))
        out = run_generate(client, [f"p{i}" for i in range(9)], SamplingParams(max_tokens=2))
    assert [c.text for c in out] == [f"> take[p{i}]" for i in range(9)]  # order kept
    assert 2 <= server.max_in_flight <= 3  # concurrent, but never above the limit
    assert server.in_flight == 0


def test_timeout_is_retried_then_reported():
    with OpenAIServer(echo_actor, delay_s=0.5) as server:
        client = OpenAIClient(make_config(server, timeout_s=0.1, max_retries=1))
        with pytest.raises(EndpointError, match="timeout") as info:
            run_generate(client, ["x"], SamplingParams())
    assert "2 attempts" in str(info.value)
    assert client.usage.retries == 1


# ------------------------------------------------------------------------------------------------
# Retries and errors
# ------------------------------------------------------------------------------------------------


def test_500s_then_recovery_counts_retries(server, caplog):
    server.fail_next(2, status=500)
    client = OpenAIClient(make_config(server))
    with caplog.at_level(logging.WARNING, logger="retro_ray.llm.openai_client"):
        (c,) = run_generate(client, ["key"], SamplingParams(stop=("\n",)))
    assert c.text == "> take[key]"
    assert client.usage.retries == 2
    assert client.usage.requests == 1
    assert len(server.requests) == 3
    retries = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(retries) == 2
    assert all(server.base_url in r.getMessage() and "HTTP 500" in r.getMessage() for r in retries)


def test_429_is_retried(server):
    server.fail_next(1, status=429, message="slow down", headers={"Retry-After": "0"})
    client = OpenAIClient(make_config(server))
    (c,) = run_generate(client, ["key"], SamplingParams())
    assert c.text and client.usage.retries == 1


def test_endpoint_down_raises_endpoint_error_after_max_retries(server, caplog):
    server.stop()
    client = OpenAIClient(make_config(server, max_retries=2))
    with (
        caplog.at_level(logging.WARNING, logger="retro_ray.llm.openai_client"),
        pytest.raises(EndpointError) as info,
    ):
        run_generate(client, ["x"], SamplingParams())
    message = str(info.value)
    assert server.base_url in message
    assert "'actor'" in message
    assert "3 attempts" in message
    assert "is the server running" in message
    assert client.usage.retries == 2
    assert len(caplog.records) == 2


def test_port_nothing_listens_on():
    url = f"http://127.0.0.1:{free_port()}/v1"
    client = OpenAIClient(
        EndpointConfig(
            base_url=url,
            max_retries=1,
            backoff_s=0.001,
            timeout_s=2.0,
            http_transport=CURRENT_TRANSPORT,
        )
    )
    with pytest.raises(EndpointError, match="2 attempts") as info:
        run_generate(client, ["x"], SamplingParams())
    assert url in str(info.value)


def test_a_proxy_named_by_the_environment_is_used_unless_no_proxy(server, monkeypatch):
    """HTTP_PROXY is honoured (here a port nothing listens on, so the request cannot arrive) and
    NO_PROXY exempts a host, as the SDK's clients do; the transport reads both when it is made."""
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with pytest.raises(EndpointError):
        run_generate(OpenAIClient(make_config(server, max_retries=0)), ["x"], SamplingParams())
    assert server.requests == []
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    out = run_generate(OpenAIClient(make_config(server, max_retries=0)), ["x"], SamplingParams())
    assert out[0].text and len(server.requests) == 1


def test_persistent_500_gives_up(server):
    server.fail_next(10, status=503, message="overloaded")
    client = OpenAIClient(make_config(server, max_retries=2))
    with pytest.raises(EndpointError) as info:
        run_generate(client, ["x"], SamplingParams())
    assert "HTTP 503" in str(info.value) and "overloaded" in str(info.value)
    assert len(server.requests) == 3


def test_failed_batch_cancels_its_other_requests():
    def fail_one(prompt: str) -> str:
        if prompt == "bad":
            raise RuntimeError("boom")  # the fixture answers 500
        return "ok"

    with OpenAIServer(fail_one, delay_s=0.05) as server:
        client = OpenAIClient(make_config(server, max_retries=0, max_concurrency=1))
        with pytest.raises(EndpointError, match="responder failed"):
            run_generate(client, ["bad", *["fine"] * 20], SamplingParams())
        time.sleep(0.2)
        assert len(server.requests) < 5  # the queued requests were never sent


@pytest.mark.parametrize("status", [401, 403, 404])
def test_setup_errors_not_retried(server, status):
    server.fail_next(1, status=status, message="bad request")
    client = OpenAIClient(make_config(server))
    with pytest.raises(EndpointError) as info:
        run_generate(client, ["x"], SamplingParams())
    assert len(server.requests) == 1
    assert client.usage.retries == 0
    assert f"HTTP {status}" in str(info.value)
    assert "1 attempt." in str(info.value)
    assert server.base_url in str(info.value)


OVERFLOW = (
    "This model's maximum context length is 2048 tokens. However, you requested 4107 tokens "
    "(4043 in the messages, 64 in the completion). Please reduce the length of the messages."
)


@pytest.mark.parametrize("status", [400, 413, 422])
def test_a_rejected_request_is_not_an_outage(server, status):
    """A refusal of this one request (a prompt past the context window) is not retried and is
    not an EndpointError: the trial loop records the episode as failed and the run goes on."""
    server.fail_next(1, status=status, message=OVERFLOW)
    client = OpenAIClient(make_config(server))
    with pytest.raises(RequestRejected) as info:
        run_generate(client, ["x"], SamplingParams())
    assert not isinstance(info.value, EndpointError)
    assert len(server.requests) == 1 and client.usage.retries == 0
    assert info.value.status == status and info.value.kind == "invalid_request_error"
    assert server.base_url in str(info.value) and f"HTTP {status}" in str(info.value)
    assert "maximum context length" in str(info.value)
    # The client stays usable: the next request is answered.
    assert run_generate(client, ["y"], SamplingParams())[0].text


def test_a_prompt_pattern_rejected_by_the_loopback_server():
    with OpenAIServer(echo_actor, reject=lambda p: OVERFLOW if "huge" in p else None) as srv:
        client = OpenAIClient(make_config(srv))
        with pytest.raises(RequestRejected, match="maximum context length"):
            run_generate(client, ["a huge prompt"], SamplingParams())
        assert run_generate(client, ["a small prompt"], SamplingParams())[0].text


def test_every_request_rejected_is_a_setup_error(server):
    """Rejections without a success between them: a setting (a parameter the server refuses),
    not the input, so the run stops instead of failing every episode."""
    server.fail_next(REJECTIONS_BEFORE_OUTAGE, status=400, message="unknown parameter 'seed'")
    client = OpenAIClient(make_config(server))
    for _ in range(REJECTIONS_BEFORE_OUTAGE - 1):
        with pytest.raises(RequestRejected):
            run_generate(client, ["x"], SamplingParams())
    with pytest.raises(EndpointError, match="in a row rejected") as info:
        run_generate(client, ["x"], SamplingParams())
    assert info.value.status == 400


def test_error_carries_no_raw_body_and_no_chained_exception(server, monkeypatch):
    """The SDK exception's text is the provider's whole body, which may echo the prompt or the
    key: the error is raised ``from None`` with the status, the type and a short reason only."""
    secret = "sk-test-echoed-key-456"
    monkeypatch.setenv(KEY_ENV, secret)
    prompt_echo = "PROMPT-ECHO " * 200
    server.fail_next(1, status=401, message=f"bad key {secret}; you sent: {prompt_echo}")
    client = OpenAIClient(make_config(server))
    with pytest.raises(EndpointError) as info:
        run_generate(client, ["x"], SamplingParams())
    error = info.value
    assert error.__cause__ is None and error.__suppress_context__
    assert error.status == 401 and error.kind == "invalid_request_error"
    printed = "".join(traceback.format_exception(error))
    assert secret not in printed and "Error code: 401 - {" not in printed
    assert printed.count("PROMPT-ECHO") < 20  # a short excerpt, not the body
    assert server.base_url in printed and "HTTP 401" in printed


def test_api_key_sent_but_never_shown(server, monkeypatch, caplog):
    secret = "sk-test-very-secret-123"
    monkeypatch.setenv(KEY_ENV, secret)
    server.fail_next(10, status=500, message="server echoes " + secret)
    client = OpenAIClient(make_config(server, max_retries=1))
    with caplog.at_level(logging.DEBUG), pytest.raises(EndpointError) as info:
        run_generate(client, ["x"], SamplingParams())
    assert server.requests[0].header("Authorization") == f"Bearer {secret}"
    assert secret not in str(info.value)
    assert secret not in repr(client)
    # Our own retry log lines carry no key (the server's echo is scrubbed there too).
    ours = [r for r in caplog.records if r.name == "retro_ray.llm.openai_client"]
    assert ours and all(secret not in r.getMessage() for r in ours)


def test_missing_key_uses_placeholder(server, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    client = OpenAIClient(make_config(server))
    run_generate(client, ["x"], SamplingParams())
    assert server.requests[0].header("Authorization") == "Bearer EMPTY"


# ------------------------------------------------------------------------------------------------
# The fixture itself: the official client accepts its answers
# ------------------------------------------------------------------------------------------------


def test_official_openai_client_accepts_fixture_shapes(server):
    sdk = openai.OpenAI(api_key="x", base_url=server.base_url, max_retries=0)
    try:
        assert [m.id for m in sdk.models.list()] == ["actor"]
        comp = sdk.completions.create(model="actor", prompt="the key", max_tokens=2, logprobs=1)
        assert comp.object == "text_completion"
        assert comp.choices[0].text == "> take[key]"
        assert comp.choices[0].logprobs is not None
        assert comp.choices[0].logprobs.tokens == [">", " take[key]"]
        assert comp.usage is not None and comp.usage.total_tokens == 2 + 2
        chat = sdk.chat.completions.create(
            model="actor",
            messages=[{"role": "user", "content": "the box"}],
            stop=["\n"],
            logprobs=True,
        )
        assert chat.object == "chat.completion"
        assert chat.choices[0].message.role == "assistant"
        assert chat.choices[0].message.content == "> take[box]"
        assert chat.choices[0].finish_reason == "stop"
        assert chat.choices[0].logprobs is not None
        assert [t.logprob for t in chat.choices[0].logprobs.content or []] == [-0.1, -0.1]
        server.fail_next(1, status=500)
        with pytest.raises(openai.InternalServerError):
            sdk.completions.create(model="actor", prompt="x")
        with pytest.raises(openai.NotFoundError):
            sdk.embeddings.create(model="actor", input="x")
    finally:
        sdk.close()


def test_apply_limits():
    assert apply_limits("a b STOP c", ["STOP"], 10) == ("a b ", "stop")
    assert apply_limits("a b c d", [], 2) == ("a b", "length")
    assert apply_limits("a b c", ["zz"], None) == ("a b c", "stop")


def test_a_key_with_a_trailing_newline_is_sent_stripped(server, monkeypatch):
    """A key read from a file often ends in a newline; sent raw, every request failed."""
    monkeypatch.setenv(KEY_ENV, "sk-test-key\n")
    client = OpenAIClient.from_config(make_config(server))
    (out,) = run_generate(client, ["open the box"], SamplingParams(max_tokens=8))
    assert out.text.startswith("> take[box]")
    assert server.requests[-1].header("Authorization") == "Bearer sk-test-key"


# ------------------------------------------------------------------------------------------------
# Transport: the SDK's aiohttp or httpx client, connections kept alive and reused
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["direct", "aiohttp", "httpx"], indirect=True)
def test_transport_reuses_keep_alive_connections(transport):
    """Three rounds of 24 requests, at most 8 in flight: every round after the first reuses the
    first round's connections (at most 8 ever opened), through the transport configured."""
    from benchmarks.replay_server import ReplayServer, prompt_key

    prompts = [f"p{i}" for i in range(24)]
    replay = ReplayServer({prompt_key(p): p.upper() for p in prompts}, 0.02, "missing")
    opened = []

    async def counted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        opened.append(writer.get_extra_info("peername"))
        await replay.handle(reader, writer)

    async def main() -> list:
        listener = await asyncio.start_server(counted, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        config = EndpointConfig(
            base_url=f"http://127.0.0.1:{port}/v1", max_concurrency=8, http_transport=transport
        )
        client = OpenAIClient(config)
        try:
            rounds = [await client.generate(prompts, SamplingParams(max_tokens=4)) for _ in "abc"]
            inner: Any = client._transport
            http = inner.session if transport == "direct" else inner.client._client
            kind = type(http).__name__  # the HTTP client that carried the requests
        finally:
            await client.aclose()
            listener.close()
        return [rounds, kind]

    rounds, kind = asyncio.run(main())
    assert all([c.text for c in out] == [p.upper() for p in prompts] for out in rounds)
    assert replay.hits == 72 and replay.misses == 0
    assert 1 <= len(opened) <= 8  # 72 requests, never more connections than requests in flight
    assert ("Aio" in kind) == (transport == "aiohttp")
    assert (kind == "ClientSession") == (transport == "direct")


def test_a_body_that_is_not_an_openai_response_stops_with_a_hint(transport):
    """A 200 with a web page (a base_url without ``/v1`` behind a proxy, say) is not retried and
    not a failed episode: the run stops with an error that says what to check."""

    async def web_page(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (await reader.readline()) not in (b"\r\n", b""):
            pass  # the headers; the body of the POST is left unread
        page = b"<html>hello</html>"
        head = f"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {len(page)}\r\n"
        writer.write(head.encode() + b"Connection: close\r\n\r\n" + page)
        await writer.drain()
        writer.close()

    async def main() -> None:
        listener = await asyncio.start_server(web_page, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        config = EndpointConfig(base_url=f"http://127.0.0.1:{port}/v1", http_transport=transport)
        client = OpenAIClient(config)
        try:
            await client.generate(["x"], SamplingParams())
        finally:
            await client.aclose()
            listener.close()

    with pytest.raises(EndpointError, match="ending in /v1") as info:
        asyncio.run(main())
    assert info.value.kind == "malformed_response" and "1 attempt." in str(info.value)
