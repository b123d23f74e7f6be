"""Offline training from a Parquet experience log: groups by (run, iteration, task, trial), group
baselines, the loss chosen by what the log holds (our ids and log-probs: ``ppo_clip``; a foreign
log: ``rwr`` on re-tokenised text), and training that makes rewarded reflections more likely."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from retro_ray.config import LearnerConfig, LoRAConfig
from retro_ray.learner.offline import (
    load_groups,
    offline_batches,
    offline_config,
    resolve_loss,
    train_offline,
)
from retro_ray.learner.policy import ReflectorPolicy
from retro_ray.llm.base import SamplingParams
from retro_ray.rollout.experience import ExperienceLog, ExperienceRow
from tests.support.tiny_model import build_tiny_model

PROMPTS = ["> Search[Alice Kay]\nAlice Kay was taught by", "> Search[Bob Lee]\nBob Lee"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny_offline")).model_dir


def row(task: str, trial: int, sample: int, reward: float | None, **kw: object) -> ExperienceRow:
    return ExperienceRow(
        task_id=task, split="train", env="lookup", mode="train", trial=trial, sample=sample,
        won=bool(reward), return_after=float(reward or 0.0), reward=reward,
        return_before=None if reward is None else 0.0, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def write_log(root: Path, rows_by_task: dict[str, list[ExperienceRow]]) -> ExperienceLog:
    log = ExperienceLog(root)
    for task, rows in rows_by_task.items():
        log.write_episode("run1", 0, task, rows)
    return log


def ours(text: str, ids: list[int]) -> dict[str, object]:
    return {
        "prompt": PROMPTS[0],
        "reflection": text,
        "reflection_token_ids": ids,
        "reflection_logprobs": [-1.0] * len(ids),
    }


def test_groups_advantages_and_the_loss_of_our_own_log(tmp_path: Path) -> None:
    log = write_log(
        tmp_path,
        {
            "a": [
                row("a", 0, 0, None),
                *(row("a", 1, i, r, **ours(f"y{i}", [5, 6 + i])) for i, r in enumerate([1, 0, 0])),
            ],
            "b": [row("b", 1, i, 0.0, **ours("z", [7])) for i in range(2)],
            "c": [row("c", 1, 0, 1.0, **ours("lone", [8]))],  # a singleton: no baseline
        },
    )
    groups = load_groups(log)
    assert [g.key for g in groups] == [("run1", 0, "a", 1), ("run1", 0, "b", 1)]
    assert resolve_loss(groups) == "ppo_clip"
    tokenizer = lambda text, **_: {"input_ids": [1, 2, 3]}  # noqa: E731
    config = LearnerConfig(advantage_estimator="leave_one_out")
    (batch,) = offline_batches(groups, tokenizer, 0, config, 8, loss_name="ppo_clip")
    by_row = dict(zip(batch.rewards.tolist(), batch.advantages.tolist(), strict=False))
    assert sorted(batch.advantages.tolist()) == pytest.approx([-0.5, -0.5, 0.0, 0.0, 1.0])
    assert by_row[1.0] == pytest.approx(1.0)
    assert batch.old_logprobs is not None
    assert batch.old_logprobs[batch.loss_mask.bool()].tolist() == [-1.0] * 8


def test_a_foreign_log_falls_back_to_reward_weighted_likelihood(
    tmp_path: Path, model_dir: Path
) -> None:
    texts = ["search Bob Lee", "answer now"]
    log = write_log(
        tmp_path,
        {
            "a": [
                row("a", 1, i, float(i == 0), prompt=PROMPTS[0], reflection=t)
                for i, t in enumerate(texts)
            ]
        },
    )
    groups = load_groups(log)
    assert resolve_loss(groups) == "rwr"
    with pytest.raises(ValueError, match="ppo_clip needs"):
        resolve_loss(groups, "ppo_clip")
    policy = ReflectorPolicy(model_dir, offline_config(LearnerConfig(), "rwr"))
    (batch,) = offline_batches(
        groups, policy.tokenizer, policy.pad_token_id, policy.config, 4, loss_name="rwr"
    )
    assert batch.old_logprobs is None
    retokenised = policy.tokenizer(texts[0], add_special_tokens=False)["input_ids"]
    assert batch.input_ids[0][batch.loss_mask[0].bool()].tolist() == retokenised


@pytest.mark.parametrize("with_logprobs", [True, False], ids=["ppo_clip", "rwr"])
def test_offline_training_makes_rewarded_reflections_more_likely(
    tmp_path: Path, model_dir: Path, with_logprobs: bool
) -> None:
    sampler = ReflectorPolicy(model_dir, LearnerConfig(lora=LoRAConfig(rank=4, alpha=8)))
    sampling = SamplingParams(max_tokens=6, temperature=1.0, logprobs=True)
    episodes: dict[str, list[ExperienceRow]] = {}
    for t, prompt in enumerate(PROMPTS):
        samples = sampler.sample([prompt] * 4, sampling)
        episodes[f"t{t}"] = [
            row(
                f"t{t}",
                1,
                i,
                float(i == 0),
                prompt=prompt,
                reflection=s.text or "x",
                reflection_token_ids=s.token_ids if with_logprobs else None,
                reflection_logprobs=s.logprobs if with_logprobs else None,
            )
            for i, s in enumerate(samples)
        ]
    groups = load_groups(write_log(tmp_path, episodes))
    loss = resolve_loss(groups)
    assert loss == ("ppo_clip" if with_logprobs else "rwr")
    config = offline_config(LearnerConfig(lora=LoRAConfig(rank=4, alpha=8), lr=5e-3), loss)
    policy = ReflectorPolicy(model_dir, config)
    (batch,) = offline_batches(
        groups, policy.tokenizer, policy.pad_token_id, config, 8, loss_name=loss
    )

    def seq_logprob() -> torch.Tensor:
        return (policy.current_logprobs(batch) * batch.loss_mask).sum(-1)

    before = seq_logprob()
    metrics = train_offline(policy, groups, epochs=4, groups_per_batch=2)
    gain = seq_logprob() - before
    rewarded = batch.rewards == 1.0
    assert len(metrics) == 4
    assert gain[rewarded].mean() > gain[~rewarded].mean() + 0.1
