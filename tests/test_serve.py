"""The Serve application end to end (slow): one torch-backed app with two replicas for the whole
module, and one vLLM-backed app for a single test.

On this 2-core machine the cluster declares 4 logical CPUs and each torch replica reserves half
of one; requests are tiny (a few tokens) so that streams measure swaps, not decoding.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from retro_ray.config import Config, load_config
from retro_ray.registry.validation import AdapterRejected, file_sha256
from retro_ray.serve.launch import RunningApp, start, stop
from retro_ray.serve.loadgen import RequestStream, failures, monotone_per_client
from tests.support.conformance import check_app
from tests.support.extras import require_vllm
from tests.support.ports import free_port
from tests.support.tiny_model import TinyModel, build_adapter, build_tiny_model

pytestmark = pytest.mark.slow

TOKEN_ENV = "RETRO_RAY_TEST_SERVE_TOKEN"
TOKEN = "test-token-123"
SWAP_BOUND_S = 60.0
"""How long to wait for a swap to show: the app's swap_timeout_s (30), its poll interval and a
request. A swap that happens at all shows by then; how fast it is, benchmarks.hotswap measures
(a tighter bound here only flaked on a loaded 2-core machine)."""
AUTH = {"authorization": f"Bearer {TOKEN}"}


@dataclass
class Served:
    app: RunningApp
    cfg: Config
    tiny: TinyModel
    config_path: Path

    @property
    def url(self) -> str:
        return self.app.url

    def post(self, route: str, body: dict, headers: dict | None = None) -> httpx.Response:
        return httpx.post(f"{self.url}{route}", json=body, headers=headers or AUTH, timeout=60)


def serve_overrides(tiny: TinyModel, root: Path, port: int) -> list[str]:
    return [
        "serve.backend=torch",
        f"serve.model_dir={tiny.model_dir}",
        f"serve.port={port}",
        "serve.num_replicas=2",
        "serve.replica_cpus=0.5",
        "serve.max_tokens_limit=64",
        "serve.max_request_bytes=20000",
        "serve.poll_interval_s=0.1",
        "serve.swap_timeout_s=30",
        f"serve.api_key_env={TOKEN_ENV}",
        f"registry.root={root}",
        "registry.max_lora_rank=8",
    ]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return build_tiny_model(tmp_path_factory.mktemp("tiny_serve"))


@pytest.fixture(scope="module")
def served(ray_cluster, tiny: TinyModel, tmp_path_factory) -> Iterator[Served]:
    from ray import serve

    os.environ[TOKEN_ENV] = TOKEN
    root = tmp_path_factory.mktemp("serve")
    overrides = serve_overrides(tiny, root / "registry", free_port())
    config_path = root / "serve.yaml"
    config_path.write_text(_yaml_text(overrides))
    cfg = load_config(config_path)
    app = start(cfg)
    try:
        yield Served(app, cfg, tiny, config_path)
    finally:
        stop(app)
        serve.shutdown()


def _yaml_text(overrides: list[str]) -> str:
    """Dotted overrides as a nested YAML file (what a user would write)."""
    from retro_ray.config import apply_override

    data: dict = {}
    for item in overrides:
        apply_override(data, item)
    return yaml.safe_dump(data)


def wait_until(predicate, timeout_s: float = SWAP_BOUND_S, every_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every_s)
    return False


# -- the API -------------------------------------------------------------------------------------


def test_openai_client_and_our_client_work(served: Served) -> None:
    import asyncio

    import openai

    from retro_ray.config import EndpointConfig
    from retro_ray.llm.base import SamplingParams
    from retro_ray.llm.openai_client import OpenAIClient

    client = openai.OpenAI(base_url=served.url, api_key=TOKEN)
    ids = {m.id for m in client.models.list().data}
    assert {"retrospective", "retro"} <= ids
    out = client.completions.create(
        model="retrospective",
        prompt="> Search[Alice Kay]\n",
        max_tokens=8,
        temperature=0,
        logprobs=1,
        extra_body={"return_token_ids": True},
    )
    choice = out.choices[0]
    token_ids = choice.model_extra["token_ids"]
    assert out.model == "retrospective" and len(token_ids) == out.usage.completion_tokens
    assert len(choice.logprobs.token_logprobs) == len(token_ids)
    assert all(lp <= 0 for lp in choice.logprobs.token_logprobs)
    chat = client.chat.completions.create(
        model="prod",
        messages=[{"role": "user", "content": "Bob Lee was taught by"}],
        max_tokens=6,
        logprobs=True,
    )
    assert chat.model.startswith("retro@") and chat.choices[0].message.role == "assistant"
    assert len(chat.choices[0].logprobs.content) == chat.usage.completion_tokens

    endpoint = EndpointConfig(base_url=served.url, model="retrospective", api_key_env=TOKEN_ENV)
    ours = OpenAIClient(endpoint, request_token_ids=True)
    sampling = SamplingParams(max_tokens=8, logprobs=True)
    (completion,) = asyncio.run(ours.generate(["> Search[Alice Kay]\n"], sampling))
    assert completion.token_ids == token_ids and completion.text == choice.text
    assert completion.logprobs == pytest.approx(choice.logprobs.token_logprobs)


def test_every_body_conforms_to_openais_schema(served: Served) -> None:
    """The completion model's app (torch backend) against OpenAI's published schema, on the base
    model and on an adapter alias (tests/test_openai_conformance.py: the chat-template model)."""
    for model in ("retrospective", "prod"):
        assert check_app(served.url, model, TOKEN, 64, 20000) == []


def test_curl_works_and_names_the_version(served: Served, tmp_path: Path) -> None:
    body = json.dumps({"model": "train", "prompt": "Bob Lee", "max_tokens": 4})
    head, out = tmp_path / "head", tmp_path / "body"
    subprocess.run(
        [
            "curl",
            "-s",
            "-D",
            str(head),
            "-o",
            str(out),
            "-H",
            f"Authorization: Bearer {TOKEN}",
            "-H",
            "Content-Type: application/json",
            "-d",
            body,
            f"{served.url}/completions",
        ],
        check=True,
        timeout=60,
    )
    headers = head.read_text().lower()
    assert headers.startswith("http/1.1 200")
    version = json.loads(out.read_text())["model"]
    assert f"x-retro-version: {version}" in headers and version.startswith("retro@")
    health = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"{served.url[:-3]}/healthz"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    assert health == "200"


def test_reflect_returns_a_reflection_and_its_version(served: Served) -> None:
    body = {
        "task": "Find the key.",
        "trajectory": [{"action": "open drawer", "observation": "The drawer is empty."}],
        "return": 0.0,
        "reflections": ["The key is not in the box."],
        "model": "prod",
        "max_tokens": 12,
    }
    response = served.post("/reflect", body)
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["model"] == response.headers["x-retro-version"]
    assert len(data["token_ids"]) == data["completion_tokens"] == len(data["logprobs"])
    assert "\n" not in data["reflection"]


# -- hot-swap ------------------------------------------------------------------------------------


def test_three_versions_swapped_under_a_steady_stream(served: Served) -> None:
    registry = served.app.registry
    stream = RequestStream(served.url, "train", clients=3, token=TOKEN).start()
    try:
        assert wait_until(lambda: answered(stream) >= 3)  # the stream is flowing
        delays = []
        for adapter in ("a", "b", "a"):  # the same files twice still make a new version
            began = time.monotonic()
            meta = registry.publish(served.tiny.adapters[adapter], step=len(delays))
            delays.append(stream.wait_for(meta.name, began, SWAP_BOUND_S))
            assert wait_until(lambda name=meta.name: answered(stream, name) >= 3)
    finally:
        samples = stream.stop()
    print(f"publish -> first response on the new version: {delays}; {len(samples)} requests")
    assert not failures(samples), failures(samples)[:3]
    assert monotone_per_client(samples)
    assert all(d is not None for d in delays), delays
    names = {s.model for s in samples}
    assert {f"retro@{registry.resolve('train') - k}" for k in range(3)} <= names


def answered(stream: RequestStream, model: str | None = None) -> int:
    """Requests the stream got answered so far (by ``model``, if given)."""
    return sum(1 for s in list(stream.samples) if s.status == 200 and model in (None, s.model))


def failed_swaps(served: Served, reason: str) -> int:
    import ray

    swaps = ray.get(served.app.controller.swaps.remote())
    return sum(1 for s in swaps if not s.ok and reason in s.reason)


def _wrong_rank_adapter(tiny: TinyModel, out: Path) -> Path:
    import tests.support.tiny_model as tm

    rank, tm.LORA_RANK = tm.LORA_RANK, 16
    try:
        return build_adapter(tiny.model_dir, out, seed=5)
    finally:
        tm.LORA_RANK = rank


def test_bad_adapters_are_rejected_while_serving_continues(
    served: Served, tmp_path: Path, tmp_path_factory
) -> None:
    registry = served.app.registry
    if "train" not in registry.state().aliases:
        registry.publish(served.tiny.adapters["a"])
    current = registry.version_name(registry.resolve("train"))
    assert wait_until(
        lambda: served.post("/completions", _small("train")).json()["model"] == current
    )
    corrupt = tmp_path / "corrupt"
    shutil.copytree(served.tiny.adapters["b"], corrupt)
    (corrupt / "adapter_model.safetensors").write_bytes(b"\x00" * 512)
    other = build_tiny_model(tmp_path_factory.mktemp("other"), hidden_size=64, num_layers=1)
    tampered_before = failed_swaps(served, "changed since publish")
    stream = RequestStream(served.url, "train", clients=2, token=TOKEN).start()
    try:
        assert wait_until(lambda: answered(stream) >= 2)
        for bad, why in [
            (corrupt, "corrupt"),
            (_wrong_rank_adapter(served.tiny, tmp_path / "rank16"), "max_lora_rank"),
            (other.adapters["a"], "another base model"),
        ]:
            with pytest.raises(AdapterRejected, match=why):
                registry.publish(bad)
        # A version damaged after publish fails its checksum on the replicas: the swap is
        # dropped and the old version keeps serving.
        meta = registry.publish(served.tiny.adapters["b"], alias=None)
        (registry.path(meta.version) / "adapter_model.safetensors").write_bytes(b"tampered")
        registry.promote(meta.version, "train")
        assert wait_until(
            lambda: failed_swaps(served, "changed since publish") > tampered_before
        ), "the tampered version's swap was never attempted"
        after_swap = answered(stream)
        assert wait_until(lambda: answered(stream) >= after_swap + 4)  # still serving after it
    finally:
        samples = stream.stop()
        registry.rollback("train", current)
    assert not failures(samples) and {s.model for s in samples} == {current}


def test_cli_promote_and_rollback_move_prod(served: Served) -> None:
    from retro_ray.cli import main

    registry = served.app.registry

    def intact() -> list[int]:  # the previous test left a version damaged on purpose
        good = []
        for version in registry.versions():
            with contextlib.suppress(AdapterRejected):
                registry.verify(version)
                good.append(version)
        return good

    while len(intact()) < 2:
        registry.publish(served.tiny.adapters["a"])
    low, high = intact()[-2:]
    config = ["--config", str(served.config_path)]

    def prod_is(version: int) -> bool:
        return served.post("/completions", _small("prod")).json()["model"] == f"retro@{version}"

    assert main(["registry", "promote", str(low), *config]) == 0
    assert wait_until(lambda: prod_is(low))
    assert main(["registry", "promote", f"retro@{high}", *config]) == 0
    assert wait_until(lambda: prod_is(high))
    assert main(["registry", "rollback", *config]) == 0
    assert wait_until(lambda: prod_is(low))
    assert main(["registry", "list", "--json", *config]) == 0


def _small(model: str) -> dict:
    return {"model": model, "prompt": "Bob Lee", "max_tokens": 2}


# -- security and bad input ----------------------------------------------------------------------


def test_security_and_limits(served: Served) -> None:
    url = served.url
    assert httpx.get(f"{url[:-3]}/healthz").status_code == 200  # open: health only
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}):
        response = httpx.post(f"{url}/completions", json=_small("prod"), headers=headers)
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{url}/models").status_code == 401
    cases = [
        ({**_small("prod"), "max_tokens": 65}, 400, "max_tokens"),
        ({**_small("../../etc/passwd")}, 400, "model"),
        ({**_small("retro@999")}, 404, "model"),
        ({**_small("nope")}, 404, "model"),
        ({**_small("prod"), "n": 2}, 400, "n"),
        ({**_small("prod"), "stream": True}, 400, "stream"),
        ({**_small("prod"), "temperature": -1}, 400, "temperature"),
        ({"model": "prod"}, 400, "prompt"),
        ({**_small("prod"), "prompt": "x " * 400, "max_tokens": 64}, 400, "prompt"),
    ]
    for body, status, param in cases:
        response = served.post("/completions", body)
        error = response.json()["error"]
        assert response.status_code == status and error["param"] == param, (body, error)
        assert error["message"] and error["type"]
    raw = httpx.post(
        f"{url}/completions", content=b"{not json", headers={**AUTH, "content-type": "x"}
    )
    assert raw.status_code == 400 and "error" in raw.json()
    big = served.post("/completions", {**_small("prod"), "prompt": "x" * 30_000})
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
    assert httpx.get(f"{url}/nowhere", headers=AUTH).status_code == 404
    assert httpx.get(f"{url}/completions", headers=AUTH).status_code == 405


def test_fuzz_of_the_openapi_spec_finds_no_5xx(served: Served) -> None:
    """Schemathesis generates valid and invalid requests for every operation of the app's own
    OpenAPI spec; none may be answered with a 5xx, and every error is in OpenAI's shape."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    spec = httpx.get(f"{served.url[:-3]}/openapi.json", headers=AUTH).json()
    schema = schemathesis.openapi.from_dict(spec)
    base = served.url[:-3]
    seen: dict[int, int] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(
                max_examples=25,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def check(case) -> None:
                response = case.call(base_url=base, headers=AUTH, timeout=60)
                seen[response.status_code] = seen.get(response.status_code, 0) + 1
                assert response.status_code < 500, (case.body, response.text[:300])
                if response.status_code >= 400:
                    assert "error" in response.json(), response.text[:300]

            with contextlib.suppress(Unsatisfiable):  # e.g. no invalid GET /healthz exists
                check()
    print(f"fuzz statuses: {seen}")
    assert any(status >= 400 for status in seen) and 200 in seen


# -- gated promotion through the endpoint --------------------------------------------------------


def test_gated_promotion_evaluates_through_the_endpoint(served: Served, tmp_path: Path) -> None:
    import asyncio

    from retro_ray.driver.gate import gated_promote

    registry = served.app.registry
    cfg = load_config(
        served.config_path,
        [
            "env.name=lookup",
            "env.num_tasks=3",
            "actor.policy=scripted",
            "trials.max_trials=2",
            f"reflector.endpoint.base_url={served.url}",
            f"reflector.endpoint.api_key_env={TOKEN_ENV}",
            "reflector.endpoint.max_tokens=8",
            "registry.gate_tasks=3",
            "registry.gate_margin=1.0",  # any candidate passes: the test checks the wiring
        ],
    )
    meta = registry.publish(served.tiny.adapters["b"], alias="train")
    decision = asyncio.run(gated_promote(registry, cfg, "train", out_dir=tmp_path))
    assert decision.promote and decision.candidate == meta.name
    assert registry.resolve("prod") == meta.version
    assert 0.0 <= decision.candidate_return <= 1.0
    parts = list((tmp_path / "experience").rglob("part-*.parquet"))  # the validation episodes
    assert parts and all("eval-reflexion-greedy-" in str(p) for p in parts)  # gate_decoding
    assert registry.events()[-2]["event"] == "gate"


# -- a failed hot-swap is retried ----------------------------------------------------------------


def test_a_failed_swap_is_retried_until_it_lands(served: Served) -> None:
    """A version whose file cannot be loaded for a while (damaged, then restored): every replica
    reports why it failed, the controller retries with backoff, and the swap lands once the file
    is back; the driver's wait sees the failure and then the version served."""
    import ray

    from retro_ray.driver.train import wait_until_served

    registry = served.app.registry

    def table() -> dict:
        return ray.get(served.app.controller.table.remote())

    meta = registry.publish(served.tiny.adapters["a"], alias=None)
    weights = registry.path(meta.version) / "adapter_model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(b"\x00" * len(good))
    registry.promote(meta.version, "train")
    try:
        assert wait_until(lambda: (table()["failure"] or {}).get("attempts", 0) >= 2, 30.0)
        failure = table()["failure"]
        assert failure["aliases"]["train"] == meta.version and not failure["gave_up"]
        assert f"version {meta.version}: AdapterRejected" in failure["reason"]
        assert "changed since publish" in failure["reason"]
        replicas = table()["replicas"]  # named "<Serve replica id>@<node address>"
        assert any(f"replica {rid}: " in failure["reason"] for rid in replicas), replicas
    finally:
        weights.write_bytes(good)
    assert wait_until_served(table, meta.version, timeout_s=60.0) < 60.0
    assert table()["failure"] is None
    assert served.post("/completions", _small("train")).json()["model"] == meta.name


# -- the vLLM engine behind Serve (one test, its own app) ----------------------------------------


def test_vllm_backend_behind_serve_hot_swaps(served: Served, tmp_path: Path) -> None:
    require_vllm()
    cfg = load_config(
        served.config_path,
        [
            "serve.backend=vllm",
            "serve.app_name=retro-vllm",
            "serve.route_prefix=/vllm",
            "serve.num_replicas=1",
            "serve.replica_cpus=1",
            "serve.max_model_len=512",
            "serve.swap_timeout_s=120",
            f"registry.root={tmp_path / 'registry'}",
        ],
    )
    app = start(cfg)
    try:
        url = app.url
        meta = app.registry.publish(served.tiny.adapters["a"])
        stream = RequestStream(url, "train", clients=2, token=TOKEN).start()
        began = time.monotonic()
        delay = stream.wait_for(meta.name, began, 120)
        samples = stream.stop()
        assert delay is not None and not failures(samples) and monotone_per_client(samples)
        body = {
            **_small("train"),
            "max_tokens": 8,
            "temperature": 0,
            "logprobs": 1,
            "return_token_ids": True,
        }
        got = httpx.post(f"{url}/completions", json=body, headers=AUTH, timeout=120).json()
        twin = served_version_of(served, "a")
        assert wait_until(lambda: served.post("/completions", _small(twin)).status_code == 200)
        want = served.post("/completions", {**body, "model": twin})
        choice, ref = got["choices"][0], want.json()["choices"][0]
        assert got["model"] == meta.name and choice["token_ids"] == ref["token_ids"]
        assert choice["logprobs"]["token_logprobs"] == pytest.approx(
            ref["logprobs"]["token_logprobs"], abs=1e-3
        )
        assert check_app(url, meta.name, TOKEN, 64, 20000) == []  # OpenAI's schema, on vLLM
        print(f"vLLM behind Serve: new version served {delay:.2f}s after publish")
    finally:
        stop(app)


def served_version_of(served: Served, adapter: str) -> str:
    """A version of the torch app with the same adapter files (for a token-level parity check)."""
    registry = served.app.registry
    digest = file_sha256(served.tiny.adapters[adapter] / "adapter_model.safetensors")
    for version in registry.versions():
        if registry.get(version).files["adapter_model.safetensors"] == digest:
            return registry.version_name(version)
    return registry.publish(served.tiny.adapters[adapter], alias=None).name
