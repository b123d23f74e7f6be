"""A NaN or inf update must not poison the learner: the step is skipped and counted, and weights
that are not finite are never checkpointed, published or restored (a restart would restore them
and crash again, for ever)."""

from __future__ import annotations

import math

import pytest
import torch

from retro_ray.algo import ReflectionBatch
from retro_ray.config import LearnerConfig, LoRAConfig, PolicyLossConfig
from retro_ray.learner.checkpoint import (
    ADAPTER_DIR,
    CheckpointStore,
    LearnerState,
    lora_state,
    read_state,
)
from retro_ray.learner.policy import NonFiniteAdapter, ReflectorPolicy
from tests.support.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny_nonfinite")).model_dir


def make_policy(model_dir) -> ReflectorPolicy:
    config = LearnerConfig(
        lora=LoRAConfig(rank=4, alpha=8), loss=PolicyLossConfig(name="ppo_clip"), lr=5e-3
    )
    return ReflectorPolicy(model_dir, config, seed=0)


def batch_with(advantages: list[float]) -> ReflectionBatch:
    rows = len(advantages)
    return ReflectionBatch.from_token_lists(
        [[5, 6, 7, 8]] * rows,
        [[9 + i, 10 + i, 11 + i] for i in range(rows)],
        advantages,
        list(range(rows)),
        pad_id=0,
    )


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_nonfinite_step_is_skipped_and_counted(model_dir, tmp_path, bad: float) -> None:
    policy = make_policy(model_dir)
    policy.update(batch_with([1.0, -1.0]))  # a real step first: the moments exist
    before = lora_state(policy)
    moments = {k: v.clone() for k, v in policy.optimizer.state_dict()["state"][0].items()}
    metrics = policy.update(batch_with([bad, 1.0]))
    assert not math.isfinite(metrics["loss"])
    assert metrics["nonfinite_skipped"] == 1.0 and metrics["nonfinite_skipped_total"] == 1.0
    assert same(lora_state(policy), before) and policy.steps == 1  # no optimizer step
    after = policy.optimizer.state_dict()["state"][0]
    assert all(torch.equal(after[k], v) for k, v in moments.items())  # AdamW untouched
    metrics = policy.update(batch_with([1.0, -1.0]))  # training goes on
    assert metrics["nonfinite_skipped"] == 0.0 and metrics["nonfinite_skipped_total"] == 1.0
    assert not same(lora_state(policy), before) and policy.steps == 2
    # the count travels with the checkpoint
    store = CheckpointStore(tmp_path / "ckpt")
    saved = store.write(policy, LearnerState(2, policy.steps, 0, "h", policy.nonfinite_skipped))
    assert read_state(saved).nonfinite_skipped == 1


def _poison(policy: ReflectorPolicy) -> None:
    param = next(p for n, p in policy.model.named_parameters() if "lora_B" in n)
    with torch.no_grad():
        param[0, 0] = math.nan


def test_nonfinite_weights_are_not_checkpointed_or_published(model_dir, tmp_path) -> None:
    from retro_ray.learner.train_loop import LearnerJob, RegistryTarget, publish_adapter
    from retro_ray.registry import AdapterRegistry

    policy = make_policy(model_dir)
    policy.update(batch_with([1.0, -1.0]))
    store = CheckpointStore(tmp_path / "ckpt")
    store.write(policy, LearnerState(1, policy.steps, 0, "h"))
    _poison(policy)
    with pytest.raises(NonFiniteAdapter, match=r"NaN/inf weights .*lora_B.*not checkpointed"):
        store.write(policy, LearnerState(2, policy.steps, 0, "h"))
    assert store.cursors() == [1] and [p.name for p in store.root.iterdir()] == ["cursor_0000001"]

    target = RegistryTarget(str(tmp_path / "registry"), max_lora_rank=8)
    job = LearnerJob(str(model_dir), policy.config, None, str(store.root), registry=target)
    with pytest.raises(NonFiniteAdapter, match="not published"):
        publish_adapter(policy, job, 2)
    registry = AdapterRegistry(target.root, model_dir, target.name, target.max_lora_rank)
    assert registry.versions() == []


def test_a_nonfinite_checkpoint_is_not_restored(model_dir, tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    from retro_ray.learner.checkpoint import load_checkpoint

    policy = make_policy(model_dir)
    policy.update(batch_with([1.0, -1.0]))
    saved = CheckpointStore(tmp_path / "ckpt").write(policy, LearnerState(1, 1, 0, "h"))
    weights_file = saved / ADAPTER_DIR / "adapter_model.safetensors"
    weights = load_file(weights_file)
    first = next(k for k in weights if "lora_B" in k)
    weights[first][0, 0] = math.inf
    save_file(weights, weights_file)  # as an older release could have written it
    with pytest.raises(NonFiniteAdapter, match="not restored from"):
        load_checkpoint(saved, make_policy(model_dir))
