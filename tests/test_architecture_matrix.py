"""The product on the architectures users bring (issue 18): Llama 3, Qwen 2 and Mistral tiny
random-weight models (``tests/support/architectures.py``) x the torch and vLLM backends x the
reflector's two languages (``completion``, ``chat``).

Each cell runs one iteration of ``retro-ray train``'s loop with the in-process executors (the
learning proof's: the rollout worker's episode runner with the branching rule and the Parquet log,
the learner's update and publication to the registry, the hot-swap into the engine), then checks:

- the log holds the engine's prompt ids (after the chat template for ``chat``: no second bos; the
  text itself for ``completion``), the sampled ids, and the integer adapter version;
- chat replies end at the model's end-of-turn token, which stays in the ids (and is trained on);
- the adapter the learner trained (with an entropy bonus, so it moves off peft's zero init even
  when every reward of the iteration is equal) is the one the engine serves after the swap, and
  for tokens the engine samples with it, the learner's log-probs on exactly those ids equal the
  engine's within ``LOGPROB_ATOL`` (the tolerance of ``tests/test_backends.py``).

One vLLM engine per architecture serves both languages (three engine starts for the module).
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from retro_ray.algo import ReflectionBatch
from retro_ray.driver.local import (
    in_process_learner,
    in_process_loop,
    in_process_serving,
    in_process_vllm,
)
from retro_ray.llm.base import SamplingParams
from retro_ray.llm.templates import chat_prompt_ids, stop_token_ids
from retro_ray.reflection.prompt import REFLECTION_CUE
from retro_ray.rollout.experience import ExperienceLog
from retro_ray.run_config import load_run_config
from tests.support.architectures import ARCHITECTURES, FAMILIES
from tests.support.extras import require_vllm

LOGPROB_ATOL = 1e-3  # as tests/test_backends.py
MAX_TOKENS = 24
RANK = 8


def make_config(model_dir: Path, backend: str, kind: str):
    cfg = load_run_config(
        None,
        [
            f"run.name=matrix-{kind}",
            "env.name=lookup",
            "actor.policy=scripted",
            "trials.max_trials=2",
            f"reflector.endpoint.max_tokens={MAX_TOKENS}",
            f"reflector.prompt_format={kind}",
            f"serve.model_dir={model_dir}",
            f"serve.backend={backend}",
            "serve.max_model_len=1024",
            "train.iterations=1",
            "train.group_size=3",
            "train.failed_trials_per_iteration=6",
            f"learner.lora.rank={RANK}",
            f"registry.max_lora_rank={RANK}",
            "learner.micro_batch_size=8",
            "learner.loss.entropy_coef=0.05",
        ],
    )
    return replace(cfg, learner=replace(cfg.learner, lr=1e-2))


class Engines:
    """One engine per (architecture, backend), started on first use (the tests run architecture
    by architecture: a vLLM engine is shut down when the next architecture's starts)."""

    def __init__(self) -> None:
        self.made: dict[tuple[str, str], object] = {}

    def get(self, cfg, arch: str, backend: str):
        key = (arch, backend)
        if key not in self.made:
            if backend == "vllm":
                require_vllm()
                for other in [k for k in self.made if k[1] == "vllm"]:
                    self.made.pop(other).close()  # one engine process at a time (memory)
                self.made[key] = in_process_vllm(cfg)
            else:
                from retro_ray.llm.torch_backend import TorchBackend

                self.made[key] = TorchBackend(cfg.serve.model_dir, name="retro")
        return self.made[key]

    def close(self) -> None:
        for engine in self.made.values():
            close = getattr(engine, "close", None)
            if close is not None:
                close()


@pytest.fixture(scope="module")
def engines():
    made = Engines()
    yield made
    made.close()


def expected_prompt_ids(tokenizer, prompt: str, kind: str, instruction: str) -> list[int]:
    """What the engine must have seen for the logged prompt text: the chat template of its system
    and user turns, or the text as a completion model tokenises it."""
    if kind == "completion":
        return tokenizer(prompt)["input_ids"]
    body = prompt[len(instruction) + 1 : -len(REFLECTION_CUE)]
    messages = [{"role": "system", "content": instruction}, {"role": "user", "content": body}]
    return chat_prompt_ids(tokenizer, messages)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["completion", "chat"])
@pytest.mark.parametrize("backend", ["torch", "vllm"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_architecture_serves_swaps_and_trains(
    tiny_architectures, engines, tmp_path, arch: str, backend: str, kind: str
) -> None:
    model_dir = tiny_architectures[arch]
    cfg = make_config(model_dir, backend, kind)
    engine = engines.get(cfg, arch, backend)
    for name in list(engine.adapters):  # the engine is shared: start from the base model
        asyncio.run(engine.unload_adapter(name))
    serving = in_process_serving(cfg, tmp_path, backend=engine)
    learner = in_process_learner(cfg, tmp_path)
    loop = in_process_loop(
        cfg, tmp_path, actor=None, serving=serving, learner=learner, tokenizer=None
    )  # the driver needs no tokenizer: the log holds the engine's ids
    (record,) = loop.run()
    assert record["groups"] > 0 and record["version"] == 1
    assert serving.version == 1 and engine.adapters == ["retro@1"]  # hot-swapped

    tok = engine.tokenizer
    eos = stop_token_ids(model_dir, tok)
    family = FAMILIES[arch]
    rows = [
        r
        for r in ExperienceLog(tmp_path / "experience").read().to_pylist()
        if r["reflection_token_ids"]
    ]
    assert rows, "no reflection was logged"
    for row in rows:
        assert row["adapter_version_number"] == 0  # collected on the base model, as an integer
        want = expected_prompt_ids(tok, row["prompt"], kind, cfg.reflector.instruction)
        assert row["reflection_prompt_token_ids"] == want
        ids = row["reflection_token_ids"]
        assert len(ids) == len(row["reflection_logprobs"]) <= MAX_TOKENS
        assert family.end_of_turn not in row["reflection"]
    if family.bos is not None and kind == "chat":
        assert all(r["reflection_prompt_token_ids"].count(tok.bos_token_id) == 1 for r in rows)
    if kind == "chat":  # a reply ends at the end-of-turn token (kept in the ids), or at the budget
        ended = [r for r in rows if len(r["reflection_token_ids"]) < MAX_TOKENS]
        assert ended, "no reply ended before the token budget"
        assert all(r["reflection_token_ids"][-1] in eos for r in ended)

    # The trained adapter is served: the engine's log-probs of tokens it samples with retro@1
    # equal the learner's on exactly those ids (and differ from the base model's).
    client = serving.client()
    sampling = SamplingParams(max_tokens=MAX_TOKENS, temperature=1.0, logprobs=True, seed=5)
    sampling = dataclasses.replace(sampling, adapter="train")
    prompts = [rows[0]["prompt"], rows[-1]["prompt"]]
    if kind == "chat":
        instruction = cfg.reflector.instruction
        conversations = [
            [
                {"role": "system", "content": instruction},
                {"role": "user", "content": p[len(instruction) + 1 : -len(REFLECTION_CUE)]},
            ]
            for p in prompts
        ]
        served = asyncio.run(client.chat(conversations, sampling))
    else:
        served = asyncio.run(client.generate(prompts, sampling))
    assert all(c.model == "retro@1" and c.adapter_version == 1 for c in served)
    batch = ReflectionBatch.from_token_lists(
        [c.prompt_token_ids for c in served],
        [c.token_ids for c in served],
        [0.0] * len(served),
        [0] * len(served),
        pad_id=0,
    )
    policy = learner.policy
    mine = policy.current_logprobs(batch)
    base = policy.reference_logprobs(batch)
    mask = batch.loss_mask.bool()
    engine_lp = torch.zeros_like(mine)
    for i, c in enumerate(served):
        start = len(c.prompt_token_ids)
        engine_lp[i, start : start + len(c.token_ids)] = torch.tensor(c.logprobs)
    gap = float((mine - engine_lp).abs()[mask].max())
    moved = float((mine - base).abs()[mask].max())
    print(f"{arch}/{backend}/{kind}: max |learner - engine| = {gap:.2e}, adapter moved {moved:.2e}")
    assert gap < LOGPROB_ATOL
    assert moved > 10 * LOGPROB_ATOL, "the trained adapter did not change the policy"
