"""Secrets: which key goes where, tokens with stray whitespace, open binds, and a run that writes
none of its secrets anywhere (issue 15 item 10).

Fast: no Ray, no model. The run is ``retro-ray eval`` against two loopback OpenAI-compatible
servers (``tests/support/openai_server.py``), one for the actor and one for the reflector.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

from retro_ray.cli import EXIT_CONFIG, main
from retro_ray.config import ServeConfig, load_config
from retro_ray.config.secrets import read_secret
from retro_ray.report import build_report
from retro_ray.serve.guard import (
    GUARD,
    InsecureBind,
    RequestGuard,
    is_loopback,
    serve_token_sha256,
    token_digest,
)
from tests.support.openai_server import OpenAIServer

REPO = Path(__file__).resolve().parents[1]
ACTOR_KEY = "sk-actor-secret-4f1c9a"
SERVE_TOKEN = "serve-token-secret-8d2e7b"
UNSET = "RETRO_RAY_TEST_UNSET_TOKEN"


def test_reflector_key_defaults_to_the_serve_token_never_the_cloud_key() -> None:
    cfg = load_config(None, [])
    assert cfg.reflector.endpoint.api_key_env == ServeConfig().api_key_env
    assert cfg.reflector.endpoint.api_key_env == "RETRO_RAY_SERVE_TOKEN"
    assert cfg.actor.endpoint.api_key_env == "OPENAI_API_KEY"  # the actor may be a cloud model


def test_training_points_a_cloud_reflector_at_its_serve_app_with_the_app_token() -> None:
    """``retro-ray train`` serves the reflector itself: a config whose reflector is a cloud model
    (``configs/openai_actor.yaml``) must not send that cloud key to the run's local app."""
    from retro_ray.driver.train import with_reflector_endpoint

    cfg = load_config(REPO / "configs" / "openai_actor.yaml", ["serve.api_key_env=RUN_TOKEN"])
    assert cfg.reflector.endpoint.api_key_env == "OPENAI_API_KEY"
    served = with_reflector_endpoint(cfg, "http://127.0.0.1:8123/v1").reflector.endpoint
    assert served.base_url == "http://127.0.0.1:8123/v1" and served.api_key_env == "RUN_TOKEN"


def test_secrets_are_read_stripped(monkeypatch) -> None:
    monkeypatch.setenv("RETRO_RAY_TEST_TOKEN", f"  {SERVE_TOKEN}\n")
    assert read_secret("RETRO_RAY_TEST_TOKEN") == SERVE_TOKEN
    monkeypatch.setenv("RETRO_RAY_TEST_TOKEN", " \n")
    assert read_secret("RETRO_RAY_TEST_TOKEN") is None  # blank: no token configured
    assert read_secret(UNSET) is None


def guarded_status(authorization: str | None) -> int:
    """The status the real guard gives a request (the app behind it answers 200)."""

    async def app(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def call() -> int:
        headers = {"authorization": authorization} if authorization else {}
        transport = httpx.ASGITransport(app=RequestGuard(app))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return (await client.post("/v1/completions", json={}, headers=headers)).status_code

    return asyncio.run(call())


def test_a_token_with_a_trailing_newline_still_lets_its_holder_in(monkeypatch) -> None:
    """The token as a file or Secret holds it (``TOKEN\\n``) must accept ``Bearer TOKEN``."""
    monkeypatch.setenv("RETRO_RAY_TEST_TOKEN", f"{SERVE_TOKEN}\n")
    digest = serve_token_sha256("127.0.0.1", "RETRO_RAY_TEST_TOKEN")
    assert digest == token_digest(SERVE_TOKEN)
    saved = (GUARD.token_sha256, GUARD.max_request_bytes)
    GUARD.configure(digest, 1000)
    try:
        assert guarded_status(f"Bearer {SERVE_TOKEN}") == 200
        assert guarded_status(f"Bearer {SERVE_TOKEN}  ") == 200
        assert guarded_status("Bearer wrong") == 401
        assert guarded_status(None) == 401
    finally:
        GUARD.configure(*saved)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("localhost", True),
        ("::1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.1.2.3", False),
        ("serve.example.com", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_an_open_bind_without_a_token_is_refused_unless_asked(monkeypatch, caplog) -> None:
    assert serve_token_sha256("127.0.0.1", UNSET) is None  # loopback: no token needed
    with pytest.raises(InsecureBind, match=f"{UNSET}.*127.0.0.1.*--insecure"):
        serve_token_sha256("0.0.0.0", UNSET)
    monkeypatch.setenv("RETRO_RAY_TEST_TOKEN", "\n")  # blank counts as unset
    with pytest.raises(InsecureBind):
        serve_token_sha256("0.0.0.0", "RETRO_RAY_TEST_TOKEN")
    with caplog.at_level(logging.WARNING, logger="retro_ray.serve.guard"):
        assert serve_token_sha256("0.0.0.0", UNSET, insecure=True) is None
    assert "without a bearer token" in caplog.text
    monkeypatch.setenv("RETRO_RAY_TEST_TOKEN", SERVE_TOKEN)
    assert serve_token_sha256("0.0.0.0", "RETRO_RAY_TEST_TOKEN") == token_digest(SERVE_TOKEN)


def test_retro_ray_serve_refuses_an_open_bind_before_starting_anything(capsys) -> None:
    argv = ["serve", "--set", "serve.host=0.0.0.0", "--set", f"serve.api_key_env={UNSET}"]
    assert main(argv) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert err.startswith("error: serve.host=0.0.0.0") and UNSET in err and "--insecure" in err


# -- a run with known secrets writes none of them ------------------------------------------------


def leaked(secrets: list[str], text: str) -> list[str]:
    return [s for s in secrets if s in text]


def scan_run_dir(run_dir: Path, secrets: list[str]) -> dict[str, list[str]]:
    """Every file under ``run_dir`` whose bytes hold a secret; Parquet files are also read cell
    by cell (their pages may be compressed, which would hide a string from a byte scan)."""
    found: dict[str, list[str]] = {}
    for path in sorted(p for p in run_dir.rglob("*") if p.is_file()):
        hits = leaked(secrets, path.read_bytes().decode("latin-1"))
        if path.suffix == ".parquet":
            hits += leaked(secrets, json.dumps(pq.read_table(path).to_pylist(), default=str))
        if hits:
            found[str(path.relative_to(run_dir))] = hits
    return found


def test_a_run_with_known_secrets_writes_them_nowhere(tmp_path, monkeypatch, capfd) -> None:
    """An eval with an LLM actor and an LLM reflector, each on its own loopback server, the
    user's cloud key and the Serve token both set: each server gets its own key only, and no log,
    Parquet file, table or report of the run, nor its output, holds either secret."""
    monkeypatch.setenv("OPENAI_API_KEY", ACTOR_KEY)
    monkeypatch.setenv("RETRO_RAY_SERVE_TOKEN", SERVE_TOKEN)
    monkeypatch.chdir(tmp_path)
    actor = OpenAIServer(lambda prompt: "> Search[nobody]", models=("actor",))
    reflector = OpenAIServer(lambda prompt: "Search the other name first.", models=("retro",))
    with actor, reflector:
        argv = ["eval", "--agent", "reflexion", "--tasks", "3", "--trials", "2"]
        for override in (
            f"run.output_dir={tmp_path / 'runs'}",
            "run.name=secrets",
            "actor.policy=llm",
            f"actor.endpoint.base_url={actor.base_url}",
            "reflector.kind=llm",
            f"reflector.endpoint.base_url={reflector.base_url}",
            "reflector.endpoint.model=retro",
        ):
            argv += ["--set", override]
        assert main(argv) == 0
        run_dir = tmp_path / "runs" / "secrets"
        build_report(run_dir)  # what ``retro-ray report RUN_DIR`` writes
    assert actor.requests and reflector.requests  # both models were called
    assert {r.header("authorization") for r in actor.requests} == {f"Bearer {ACTOR_KEY}"}
    assert {r.header("authorization") for r in reflector.requests} == {f"Bearer {SERVE_TOKEN}"}

    out = capfd.readouterr()
    secrets = [ACTOR_KEY, SERVE_TOKEN]
    assert not leaked(secrets, out.out + out.err)
    written = sorted(p.suffix for p in run_dir.rglob("*") if p.is_file())
    assert {".parquet", ".json", ".html"} <= set(written)
    assert scan_run_dir(run_dir, secrets) == {}
