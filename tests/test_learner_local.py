"""The single-process learner on a tiny real model: sampled log-probs agree with the learner's,
the policy gradient moves probability toward reflections with positive advantage and away from
negative ones, the KL to the reference starts at zero, and the adapter round-trips on disk."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from retro_ray.algo import ReflectionBatch
from retro_ray.config import LearnerConfig, LoRAConfig, PolicyLossConfig
from retro_ray.learner.policy import ReflectorPolicy
from retro_ray.llm.base import SamplingParams
from retro_ray.llm.torch_backend import TorchBackend
from tests.support.tiny_model import build_tiny_model

PROMPTS = ["> Search[Alice Kay]\nAlice Kay was taught by", "> Search[Bob Lee]\nBob Lee"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny_learner")).model_dir


def make_policy(model_dir, **loss) -> ReflectorPolicy:
    config = LearnerConfig(
        lora=LoRAConfig(rank=4, alpha=8), loss=PolicyLossConfig(**loss), lr=5e-3, micro_batch_size=2
    )
    return ReflectorPolicy(model_dir, config, seed=0)


def sampled_batch(policy: ReflectorPolicy, advantages: list[float]) -> ReflectionBatch:
    sampling = SamplingParams(max_tokens=8, temperature=1.0, logprobs=True)
    prompts = [PROMPTS[i % 2] for i in range(len(advantages))]
    rows = policy.sample(prompts, sampling)
    return ReflectionBatch.from_token_lists(
        policy.prompt_ids(prompts),
        [r.token_ids for r in rows],
        advantages,
        list(range(len(advantages))),
        pad_id=policy.pad_token_id,
        old_logprobs=[r.logprobs for r in rows],
    )


def sequence_logprob(policy: ReflectorPolicy, batch: ReflectionBatch) -> torch.Tensor:
    return (policy.current_logprobs(batch) * batch.loss_mask).sum(-1)


def assert_same_step(one: ReflectorPolicy, other: ReflectorPolicy, batch: ReflectionBatch) -> None:
    """Both policies, from the same weights, take the same optimizer step on ``batch``."""
    loss_one, loss_other = one.update(batch)["loss"], other.update(batch)["loss"]
    assert loss_one == pytest.approx(loss_other, rel=1e-5, abs=1e-7)
    for (name, a), (_, b) in zip(
        one.model.named_parameters(), other.model.named_parameters(), strict=True
    ):
        if a.requires_grad:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_sampler_and_learner_agree_and_kl_starts_at_zero(model_dir) -> None:
    policy = make_policy(model_dir, name="reinforce", kl_coef=0.1)
    batch = sampled_batch(policy, [1.0, -1.0, 0.5, -0.5])
    metrics = policy.update(batch)
    assert metrics["engine_logprob_mismatch"] < 1e-4
    assert metrics["kl_ref"] == pytest.approx(0.0, abs=1e-6)  # LoRA B starts at zero


@pytest.mark.parametrize("loss", ["reinforce", "ppo_clip"])
def test_policy_gradient_moves_probability_by_advantage_sign(model_dir, loss: str) -> None:
    policy = make_policy(model_dir, name=loss)
    batch = sampled_batch(policy, [1.0, -1.0])
    before = sequence_logprob(policy, batch)
    for _ in range(5):
        policy.update(batch)
    after = sequence_logprob(policy, batch)
    assert after[0] > before[0] + 0.1  # positive advantage: more likely
    assert after[1] < before[1] - 0.1  # negative advantage: less likely


def test_saved_adapter_serves_the_trained_policy(model_dir, tmp_path) -> None:
    import asyncio

    policy = make_policy(model_dir, name="reinforce")
    batch = sampled_batch(policy, [1.0, -1.0])
    for _ in range(3):
        policy.update(batch)
    adapter = policy.save_adapter(tmp_path / "adapter")
    assert (adapter / "adapter_model.safetensors").exists()
    backend = TorchBackend(model_dir)
    asyncio.run(backend.load_adapter("retro@1", adapter))
    rows_ids = [batch.input_ids[i][batch.loss_mask[i].bool()].tolist() for i in range(2)]
    served = asyncio.run(backend.score(PROMPTS, rows_ids, adapter="retro@1"))
    trained = policy.current_logprobs(batch)
    for i, ids in enumerate(rows_ids):
        expected = trained[i][batch.loss_mask[i].bool()].tolist()
        assert served[i] == pytest.approx(expected, abs=1e-4)
        assert len(ids) == len(expected)


def test_a_stale_batch_is_importance_corrected_against_the_sampler(model_dir) -> None:
    """``train.overlap``: a batch sampled by the adapter before the learner's last step keeps the
    sampler's log-probs as the old ones, so the PPO ratio departs from 1 by exactly how far the
    adapter moved; an on-policy batch has them recomputed (ratio exactly 1)."""
    import time

    from retro_ray.algo import masked_mean
    from retro_ray.learner.queue import QueuedBatch
    from retro_ray.learner.train_loop import LearnerJob, apply_batch

    policy = make_policy(model_dir, name="ppo_clip")
    job = LearnerJob(str(model_dir), policy.config, queue=None, checkpoint_dir="unused")
    stale = sampled_batch(policy, [1.0, -1.0, 0.5, -0.5])  # sampled by the adapter at step 0
    fresh = sampled_batch(policy, [1.0, -1.0])
    on_policy = apply_batch(policy, job, QueuedBatch(0, fresh, 0, time.time()), cursor=0)
    assert on_policy["staleness"] == 0 and on_policy["old_logprobs_from_sampler"] == 0.0
    assert on_policy["ratio_mean"] == 1.0

    mask = stale.loss_mask
    want = masked_mean(torch.exp(policy.current_logprobs(stale) - stale.old_logprobs), mask)
    metrics = apply_batch(policy, job, QueuedBatch(1, stale, 0, time.time()), cursor=1)
    assert metrics["staleness"] == 1 and metrics["old_logprobs_from_sampler"] == 1.0
    assert abs(metrics["ratio_mean"] - 1.0) > 1e-3  # the adapter moved between sample and update
    assert metrics["ratio_mean"] == pytest.approx(float(want), rel=1e-4)
    assert metrics["approx_kl_old"] > 0.0


def test_length_sorted_micro_batches_take_the_same_step(model_dir) -> None:
    """Micro-batches of rows grouped by length and cut to their own width give the step the
    whole (padded) batch gives at once; each micro-batch is only as wide as its longest row."""
    from retro_ray.learner.policy import length_sorted_split

    whole = make_policy(model_dir, name="ppo_clip")
    batch = sampled_batch(whole, [1.0, -1.0, 0.5, -0.5, 0.25, -0.25])
    # Rows of clearly different lengths: drop the tail of some reflections.
    keep = [2, 8, 3, 8, 1, 5]
    reflections = [batch.input_ids[i][batch.loss_mask[i].bool()].tolist() for i in range(6)]
    batch = ReflectionBatch.from_token_lists(
        whole.prompt_ids([PROMPTS[i % 2] for i in range(6)]),
        [row[:n] for row, n in zip(reflections, keep, strict=True)],
        batch.advantages,
        list(range(6)),
        pad_id=whole.pad_token_id,
    )
    parts = length_sorted_split(batch, 3)
    widths = [p.input_ids.shape[1] for p in parts]
    assert widths == sorted(widths, reverse=True) and widths[-1] < batch.input_ids.shape[1]
    assert all(int(p.attention_mask.sum(1).max()) == p.input_ids.shape[1] for p in parts)
    assert sum(p.batch_size for p in parts) == 6
    assert sum(int(p.loss_mask.sum()) for p in parts) == int(batch.loss_mask.sum())

    whole.config = replace(whole.config, micro_batch_size=6)
    split = make_policy(model_dir, name="ppo_clip")  # micro_batch_size 2: three micro-batches
    assert_same_step(whole, split, batch)


def test_no_reference_forward_without_a_kl_penalty(model_dir, monkeypatch) -> None:
    policy = make_policy(model_dir, name="reinforce", kl_coef=0.0)
    batch = sampled_batch(policy, [1.0, -1.0])
    calls = []
    original = policy.reference_logprobs
    monkeypatch.setattr(policy, "reference_logprobs", lambda b: calls.append(1) or original(b))
    metrics = policy.update(batch)
    assert calls == [] and "kl_ref" not in metrics
    policy.config = replace(policy.config, loss=PolicyLossConfig(name="reinforce", kl_coef=0.1))
    assert "kl_ref" in policy.update(batch) and calls == [1]


def test_shared_prompts_give_the_plain_forward_and_step(model_dir) -> None:
    """Each prompt computed once for its rows (``learner.share_prompts``) gives the log-probs,
    entropies and optimizer step of every row running its own prompt: groups of different
    prompt and reflection lengths, a row with an empty reflection among them."""
    from retro_ray.learner.policy import length_sorted_split
    from retro_ray.learner.shared_prompts import prompt_layout

    shared = make_policy(model_dir, name="ppo_clip", entropy_coef=0.01)
    plain = make_policy(model_dir, name="ppo_clip", entropy_coef=0.01)
    plain.config = replace(plain.config, share_prompts=False)
    advantages = [1.0, -1.0, 0.5, -0.5, 0.25, -0.25]
    batch = sampled_batch(shared, advantages)  # prompts 0, 1, 0, 1, 0, 1
    reflections = [batch.input_ids[i][batch.loss_mask[i].bool()].tolist() for i in range(6)]
    batch = ReflectionBatch.from_token_lists(
        shared.prompt_ids([PROMPTS[i % 2] for i in range(6)]),
        [row[:n] for row, n in zip(reflections, [8, 3, 1, 8, 0, 5], strict=True)],
        batch.advantages,
        [i % 2 for i in range(6)],
        pad_id=shared.pad_token_id,
    )
    layout = prompt_layout(batch.input_ids, batch.attention_mask, batch.loss_mask)
    # Row 4's reflection is empty: the row is its prompt, shared with rows 0 and 2.
    assert layout is not None and layout.owner.tolist() == [0, 1, 0, 1, 0, 1]
    assert layout.num_prompts == 2 and layout.starts.tolist()[:2] == [
        len(p) for p in shared.prompt_ids(PROMPTS)
    ]

    lp_shared, ent_shared = shared._forward(batch, with_entropy=True)
    lp_plain, ent_plain = plain._forward(batch, with_entropy=True)
    mask = batch.loss_mask.bool()
    torch.testing.assert_close(lp_shared, lp_plain, rtol=1e-5, atol=1e-5)
    assert bool((lp_shared[~mask] == 0).all())
    torch.testing.assert_close(ent_shared[mask], ent_plain[mask], rtol=1e-5, atol=1e-5)

    parts = length_sorted_split(batch, 3, layout.owner)  # a prompt's rows stay together
    owners = [set(layout.owner[p].tolist()) for p in _rows_of(batch, parts)]
    assert sorted(map(sorted, owners)) == [[0], [1]]

    assert_same_step(shared, plain, batch)


def _rows_of(batch: ReflectionBatch, parts: list[ReflectionBatch]) -> list[torch.Tensor]:
    """The batch rows each micro-batch holds (rows are told apart by their advantage)."""
    return [
        torch.tensor([batch.advantages.tolist().index(a) for a in p.advantages.tolist()])
        for p in parts
    ]
