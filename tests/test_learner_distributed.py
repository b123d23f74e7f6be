"""The distributed learner on the session's Ray cluster, with a tiny real model: two data-parallel
workers make exactly the single-process update (global normaliser, summed LoRA gradients), and a
worker killed mid-training resumes from the last checkpoint with no batch lost or applied twice.

The reference is the plain :class:`ReflectorPolicy` applying the same global batches in this
process; the distributed runs' weights come from the adapter registry (published per checkpoint)
and from the final checkpoint."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from retro_ray.algo import ReflectionBatch
from retro_ray.config import LearnerConfig, LoRAConfig, PolicyLossConfig
from retro_ray.learner.checkpoint import ADAPTER_DIR, read_state
from retro_ray.learner.distributed import DistributedLearner
from retro_ray.learner.policy import ReflectorPolicy
from retro_ray.learner.train_loop import RegistryTarget
from tests.support.tiny_model import build_tiny_model

pytestmark = pytest.mark.slow

ATOL_ONE_STEP = 1e-4
"""Two workers sum the same numbers in another order, in micro-batches cut to other lengths
(length-sorted per worker: other padded shapes, other kernels): float round-off of about 1e-7
relative, which AdamW's first step, g / sqrt(v), lifts on near-zero gradient entries (4.9e-5
measured on one entry; the update itself moves the adapter by more than 1e-3)."""
ATOL_MANY_STEPS = 1e-3
"""Over several AdamW steps that round-off can flip the sign-like first moments of near-zero
gradient entries (an lr-sized difference on a few entries: ~7e-5 measured after 6 steps at lr
5e-3), while skipping or repeating one batch moves the weights by 5e-3 or more (checked below)."""


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny_dist")).model_dir


def learner_config(**overrides: object) -> LearnerConfig:
    base: dict[str, object] = {
        "lora": LoRAConfig(rank=4, alpha=8),
        "loss": PolicyLossConfig(name="ppo_clip"),
        "lr": 5e-3,
        "micro_batch_size": 2,  # shards of 3 rows: gradient accumulation inside each worker
        "num_workers": 2,
        "cpus_per_worker": 1.0,
        "max_staleness": 16,
    }
    return LearnerConfig(**{**base, **overrides})  # type: ignore[arg-type]


def random_batch(seed: int, rows: int = 6, vocab: int = 60) -> ReflectionBatch:
    """Engine-like rows of different lengths; advantages of both signs, groups of two."""
    g = torch.Generator().manual_seed(seed)
    prompts, reflections, logprobs = [], [], []
    for _ in range(rows):
        p = int(torch.randint(3, 9, (1,), generator=g))
        r = int(torch.randint(2, 7, (1,), generator=g))
        prompts.append(torch.randint(3, vocab, (p,), generator=g).tolist())
        reflections.append(torch.randint(3, vocab, (r,), generator=g).tolist())
        logprobs.append((-torch.rand(r, generator=g) * 3).tolist())
    advantages = torch.randn(rows, generator=g)
    return ReflectionBatch.from_token_lists(
        prompts, reflections, advantages, [i // 2 for i in range(rows)], pad_id=0,
        old_logprobs=logprobs,
    )  # fmt: skip


def reference_weights(model_dir: Path, config: LearnerConfig, batches: list) -> list[dict]:
    """LoRA weights of the plain single-process policy after each batch."""
    policy = ReflectorPolicy(model_dir, config, seed=0)
    out = []
    for batch in batches:
        policy.update(batch)
        out.append(_peft_state(policy))
    return out


def _peft_state(policy: ReflectorPolicy) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(policy.model).items()}


def _adapter(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(directory / "adapter_model.safetensors")


def max_diff(got: dict, want: dict) -> float:
    assert got.keys() == want.keys()
    return max(float((got[k] - want[k]).abs().max()) for k in want)


def assert_same_weights(got: dict, want: dict, atol: float) -> None:
    moved = max(float(w.abs().max()) for k, w in want.items() if "lora_B" in k)
    assert moved > 1e-3, "the reference update did not move the adapter"
    assert max_diff(got, want) <= atol


def test_two_workers_make_the_single_worker_update(ray_cluster, model_dir, tmp_path) -> None:
    config = learner_config(torch_threads=2)  # more threads than the CPU reserved: as asked
    batches = [random_batch(seed) for seed in range(2)]
    want = reference_weights(model_dir, config, batches)
    registry = RegistryTarget(str(tmp_path / "registry"), max_lora_rank=8)
    learner = DistributedLearner(model_dir, config, tmp_path / "train", registry=registry)
    with learner.start():
        for batch in batches:
            learner.submit(batch)
        final = learner.finish(timeout_s=300)
        metrics = learner.metrics()
    from retro_ray.registry import AdapterRegistry

    reg = AdapterRegistry(registry.root, model_dir, max_lora_rank=8)
    after_one = [v for v in reg.versions() if reg.get(v).step == 1]
    assert after_one, reg.versions()
    assert_same_weights(_adapter(reg.path(after_one[0])), want[0], ATOL_ONE_STEP)  # one step
    assert_same_weights(_adapter(final / ADAPTER_DIR), want[1], ATOL_ONE_STEP)  # and the next
    assert reg.state().aliases["train"] == max(reg.versions())
    assert read_state(final).cursor == 2
    assert [m["world_size"] for m in metrics] == [2.0, 2.0]
    assert [m["torch_threads"] for m in metrics] == [2.0, 2.0]
    assert metrics[0]["tokens"] == float(batches[0].num_loss_tokens)  # the global normaliser


@pytest.mark.timeout(1200)  # the worker group restarts from the checkpoint: minutes on 2 cores
def test_killed_worker_resumes_without_losing_or_repeating_a_batch(
    ray_cluster, model_dir, tmp_path
) -> None:
    """The kill lands mid-training and before the last batch: batches 4 and 5 are submitted only
    after it, so the restarted group must apply them (and the worker registrations say so)."""
    config = learner_config(checkpoint_every=2, max_failures=2)
    batches = [random_batch(10 + seed) for seed in range(6)]
    want = reference_weights(model_dir, config, batches)[-1]
    skipped = reference_weights(model_dir, config, batches[:2] + batches[3:])[-1]
    repeated = reference_weights(model_dir, config, batches[:3] + batches[2:])[-1]
    assert min(max_diff(skipped, want), max_diff(repeated, want)) > 5 * ATOL_MANY_STEPS
    learner = DistributedLearner(model_dir, config, tmp_path / "train")
    with learner.start():
        for batch in batches[:4]:
            learner.submit(batch)
        learner.wait_applied(2, timeout_s=300)  # first checkpoint: batches 0-1
        at_kill = learner.state()
        victim = next(pid for rank, pid, _ in at_kill["workers"] if rank == 1)
        os.kill(victim, signal.SIGKILL)  # mid-training: batches 2-3 are being applied
        killed_at = time.time()
        for batch in batches[4:]:  # the last batches exist only after the kill
            learner.submit(batch)
        final = learner.finish(timeout_s=600)
        state = learner.state()
    assert len(at_kill["committed"]) < len(batches) - 2, "the kill landed after training ended"
    restarted = [(rank, pid) for rank, pid, started in state["workers"] if started > killed_at]
    assert {rank for rank, _ in restarted} == {0, 1}, "the worker group did not restart"
    assert victim not in {pid for _, pid in restarted}
    assert state["violations"] == []
    assert state["committed"] == list(range(len(batches)))  # each batch acknowledged once
    assert read_state(final).cursor == len(batches)
    assert read_state(final).steps == len(batches)  # the restored state, plus each batch once
    assert_same_weights(_adapter(final / ADAPTER_DIR), want, ATOL_MANY_STEPS)


def test_online_mode_collects_with_the_published_adapter(ray_cluster, zoo_tiny, tmp_path) -> None:
    """``retro-ray train``'s loop on the tiny zoo with the distributed learner and in-process
    collection and serving: collect with the served ``train`` adapter, update on the learner,
    publish, hot-swap, repeat, on-policy (staleness 0)."""
    from dataclasses import replace

    from retro_ray.driver.local import in_process_loop, in_process_serving, registry_target
    from retro_ray.llm.torch_backend import TorchBackend
    from retro_ray.run_config import load_run_config

    cfg = load_run_config(
        None,
        [
            "env.name=lookup",
            "trials.max_trials=2",
            f"actor.model_dir={zoo_tiny.actor_dir}",
            "actor.endpoint.max_tokens=16",
            "reflector.endpoint.max_tokens=12",
            f"serve.model_dir={zoo_tiny.retrospective_dir}",
            "train.group_size=2",
            "train.failed_trials_per_iteration=6",
            "train.iterations=2",
            "registry.max_lora_rank=8",
        ],
    )
    config = learner_config(num_workers=1, max_staleness=0, micro_batch_size=8)
    cfg = replace(cfg, learner=config)
    serving = in_process_serving(cfg, tmp_path)
    target = registry_target(cfg, tmp_path)
    learner = DistributedLearner(
        zoo_tiny.retrospective_dir, config, tmp_path / "train", registry=target
    )
    with learner.start():
        loop = in_process_loop(
            cfg,
            tmp_path,
            actor=TorchBackend(zoo_tiny.actor_dir, name="actor"),
            serving=serving,
            learner=learner,
            tokenizer=serving.backend.tokenizer,
        )
        history = loop.run()
        metrics = learner.metrics()
    assert all(r["groups"] > 0 for r in history), "the tiny actor solved every task"
    assert [m["cursor"] for m in metrics] == [0.0, 1.0]
    assert [m["staleness"] for m in metrics] == [0.0, 0.0]
    assert [r["staleness"] for r in history] == [0, 0]
    assert [r["collect_versions"] for r in history] == [[0], [1]]  # the newest adapter collects
    assert all("reward_mean" in m and "grad_norm" in m for m in metrics)
    assert all("learner_grad_norm" in r and r["swap_s"] >= 0 for r in history)
    registry = serving.registry
    version = registry.resolve("train")
    assert registry.get(version).step == 2
    assert serving.version == version
    assert serving.backend.adapters == [registry.version_name(version)]  # the newest, swapped in


def test_a_nonfinite_batch_is_skipped_not_crash_looped(ray_cluster, model_dir, tmp_path) -> None:
    """A batch whose loss is NaN makes no step on either worker (they see the same summed
    loss), is counted, and the run goes on to the same weights as without that batch."""
    config = learner_config()
    good = [random_batch(seed) for seed in (20, 21)]
    poisoned = random_batch(22)
    poisoned = ReflectionBatch(**{**poisoned.__dict__, "advantages": poisoned.advantages * 0.0})
    poisoned.advantages[3] = float("nan")  # one worker's shard only
    want = reference_weights(model_dir, config, good)[-1]
    registry = RegistryTarget(str(tmp_path / "registry"), max_lora_rank=8)
    learner = DistributedLearner(model_dir, config, tmp_path / "train", registry=registry)
    with learner.start():
        for batch in (good[0], poisoned, good[1]):
            learner.submit(batch)
        final = learner.finish(timeout_s=300)
        metrics = learner.metrics()
        state = learner.state()
    assert state["violations"] == [] and state["committed"] == [0, 1, 2]
    assert [m["nonfinite_skipped"] for m in metrics] == [0.0, 1.0, 0.0]
    assert read_state(final).cursor == 3 and read_state(final).nonfinite_skipped == 1
    assert read_state(final).steps == 2
    assert_same_weights(_adapter(final / ADAPTER_DIR), want, ATOL_ONE_STEP)
