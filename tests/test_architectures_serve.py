"""The architectures users bring, through the product's HTTP path (issue 18): the Serve app on
each tiny Llama 3 / Qwen 2 / Mistral model (``tests/support/architectures.py``), the reflector's
OpenAI client speaking chat to it, and a LoRA adapter trained by the learner on what the app
returned, published to the registry and hot-swapped into the running app.

The architecture matrix (``tests/test_architecture_matrix.py``) runs every cell (both backends,
both languages, a whole iteration) with in-process executors; this module checks the parts the
in-process path skips: the templated prompt as the app builds it from a conversation, the token
ids and log-probs as the client parses them from JSON, ``/v1/reflect`` on a chat model, and the
app's controller noticing a new ``train`` version and serving it (torch backend: one app start
per architecture; the vLLM app is started by the conformance tests).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time

import pytest
import torch

from retro_ray.algo import ReflectionBatch
from retro_ray.config import EndpointConfig
from retro_ray.driver.local import in_process_learner
from retro_ray.envs.base import Step, Task, Trajectory
from retro_ray.llm.base import SamplingParams
from retro_ray.llm.openai_client import OpenAIClient
from retro_ray.llm.templates import chat_prompt_ids, stop_token_ids
from retro_ray.reflection.prompt import reflection_messages
from retro_ray.run_config import load_run_config
from tests.support.architectures import ARCHITECTURES
from tests.support.ports import free_port

TOKEN_ENV = "RETRO_RAY_TEST_ARCH_SERVE_TOKEN"
TOKEN = "arch-serve-token-1"
LOGPROB_ATOL = 1e-3  # as tests/test_backends.py
MAX_TOKENS = 16
RANK = 8
SWAP_TIMEOUT_S = 120.0


def _trajectory() -> Trajectory:
    task = Task(env="lookup", task_id="lookup-http-0", split="test")
    steps = [Step("Search[Bob Lee]", "Bob Lee was born in Oslo.", 0.0)]
    return Trajectory(task, 0, "Question: where was Bob Lee born?", steps, score=0.0)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_architecture_through_serve_http(ray_cluster, tiny_architectures, tmp_path, arch) -> None:
    from ray import serve

    from retro_ray.serve.launch import start, stop

    os.environ[TOKEN_ENV] = TOKEN
    model_dir = tiny_architectures[arch]
    cfg = load_run_config(
        None,
        [
            f"run.name=http-{arch}",
            f"serve.model_dir={model_dir}",
            "serve.backend=torch",
            f"serve.port={free_port()}",
            f"serve.app_name=arch-{arch}",
            f"serve.route_prefix=/{arch}",
            "serve.replica_cpus=0.5",
            f"serve.api_key_env={TOKEN_ENV}",
            f"registry.root={tmp_path / 'registry'}",
            f"registry.max_lora_rank={RANK}",
            f"learner.lora.rank={RANK}",
            "learner.loss.entropy_coef=0.05",
            "reflector.prompt_format=chat",
        ],
    )
    cfg = dataclasses.replace(cfg, learner=dataclasses.replace(cfg.learner, lr=1e-2))
    app = start(cfg)
    try:
        endpoint = EndpointConfig(
            base_url=app.url, model="retrospective", api_key_env=TOKEN_ENV, api="chat"
        )
        client = OpenAIClient(endpoint, request_token_ids=True)
        instruction = cfg.reflector.instruction
        messages = reflection_messages(
            instruction, _trajectory(), [], cfg.reflector.trajectory_max_chars
        )
        sampling = SamplingParams(max_tokens=MAX_TOKENS, temperature=1.0, logprobs=True, seed=3)
        (base_reply,) = asyncio.run(client.chat([messages], sampling))

        # The app templated the conversation exactly as the tokenizer's chat template does.
        learner = in_process_learner(cfg, tmp_path)
        tokenizer = learner.policy.tokenizer
        assert base_reply.prompt_token_ids == chat_prompt_ids(tokenizer, messages)
        assert base_reply.adapter_version == 0 and base_reply.token_ids
        if len(base_reply.token_ids) < MAX_TOKENS:  # ended at the model's end-of-turn token
            assert base_reply.token_ids[-1] in stop_token_ids(model_dir, tokenizer)

        # /v1/reflect on a chat model goes through the same template.
        import httpx

        reflect = httpx.post(
            f"{app.url}/reflect",
            json={
                "task": _trajectory().first_observation,
                "trajectory": [
                    {"action": "Search[Bob Lee]", "observation": "Bob Lee was born in Oslo."}
                ],
                "model": "retrospective",
                "max_tokens": 4,
            },
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=60,
        )
        assert reflect.status_code == 200, reflect.text
        assert reflect.json()["prompt_tokens"] == len(base_reply.prompt_token_ids)

        # The learner trains on the reply, publishes retro@1 as `train`; the app swaps it in.
        batch = ReflectionBatch.from_token_lists(
            [base_reply.prompt_token_ids],
            [base_reply.token_ids],
            [1.0],
            [0],
            pad_id=learner.policy.pad_token_id,
            old_logprobs=[base_reply.logprobs],
        )
        learner.submit(batch)
        assert learner.version == 1
        trained = dataclasses.replace(sampling, adapter="train", seed=5)
        deadline = time.monotonic() + SWAP_TIMEOUT_S
        while True:
            (reply,) = asyncio.run(client.chat([messages], trained))
            if reply.model == "retro@1" or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        assert reply.model == "retro@1" and reply.adapter_version == 1

        # What the app sampled with retro@1 has the learner's log-probs on exactly those ids.
        served = ReflectionBatch.from_token_lists(
            [reply.prompt_token_ids],
            [reply.token_ids],
            [0.0],
            [0],
            pad_id=learner.policy.pad_token_id,
        )
        mine = learner.policy.current_logprobs(served)
        base = learner.policy.reference_logprobs(served)
        mask = served.loss_mask.bool()
        engine = torch.zeros_like(mine)
        start_at = len(reply.prompt_token_ids)
        engine[0, start_at : start_at + len(reply.token_ids)] = torch.tensor(reply.logprobs)
        gap = float((mine - engine).abs()[mask].max())
        moved = float((mine - base).abs()[mask].max())
        print(f"{arch} over HTTP: max |learner - engine| = {gap:.2e}, adapter moved {moved:.2e}")
        assert gap < LOGPROB_ATOL
        assert moved > 10 * LOGPROB_ATOL  # the served log-probs are the adapter's, not the base's
    finally:
        stop(app)
        serve.shutdown()
