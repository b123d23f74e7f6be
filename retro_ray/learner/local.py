"""Retroformer in one process (no Ray): sample reflection groups from the policy, measure their
rewards with the frozen actor, update the LoRA adapter, repeat.

This is the learning proof's loop and the reference the distributed learner must reproduce.
Stages read like the paper: ``collect`` (sample m reflections per failed trial), ``score`` (one
next trial each, reward ``G(k+1) - G(k)``), ``learn`` (group baseline, policy gradient).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from retro_ray.algo import ReflectionBatch, compute_advantages
from retro_ray.config import LearnerConfig, TrainConfig
from retro_ray.learner.policy import ReflectorPolicy
from retro_ray.llm.base import SamplingParams
from retro_ray.reflection.groups import FailedTrial, ReflectionGroup


class GroupScorer(Protocol):
    """Plays one next trial per reflection and fills each group's ``returns_after``: the
    branching rule, which belongs to the rollouts (``retro_ray.rollout.branching.GroupRunner``);
    the learner takes it as a parameter instead of importing it."""

    async def score_groups(self, groups: Sequence[ReflectionGroup]) -> None: ...


@dataclass(frozen=True)
class IterationStats:
    iteration: int
    mean_reward: float
    zero_signal_group_share: float
    loss: float
    kl_ref: float
    grad_norm: float


class LocalRetroformer:
    def __init__(
        self,
        policy: ReflectorPolicy,
        runner: GroupScorer,
        learner: LearnerConfig,
        train: TrainConfig,
        max_tokens: int,
        seed: int = 0,
    ) -> None:
        self.policy = policy
        self.runner = runner
        self.learner = learner
        self.train = train
        self.rng = random.Random(seed)
        self.sampling = SamplingParams(
            max_tokens=max_tokens,
            temperature=train.temperature,
            top_p=train.top_p,
            stop=("\n",),
            logprobs=True,
        )

    def sample_groups(self, failed: Sequence[FailedTrial], m: int) -> list[ReflectionGroup]:
        prompts = [f.prompt for f in failed for _ in range(m)]
        rows = self.policy.sample(prompts, self.sampling)
        groups = []
        for i, f in enumerate(failed):
            mine = rows[i * m : (i + 1) * m]
            groups.append(
                ReflectionGroup(
                    failed=f,
                    reflections=[r.text for r in mine],
                    token_ids=[r.token_ids for r in mine],
                    logprobs=[r.logprobs for r in mine],
                )
            )
        return groups

    async def collect(self, pool: Sequence[FailedTrial]) -> list[ReflectionGroup]:
        """Sample a batch of failed trials from ``pool`` and m scored reflections for each."""
        n = min(self.train.failed_trials_per_iteration, len(pool))
        groups = self.sample_groups(self.rng.sample(list(pool), n), self.train.group_size)
        await self.runner.score_groups(groups)
        return groups

    def learn(self, groups: Sequence[ReflectionGroup]) -> dict[str, float]:
        """Group baseline, then one policy-gradient update of the adapter."""
        batch, stats = self.make_batch(groups)
        metrics = self.policy.update(batch)
        return {**stats, **metrics}

    def make_batch(
        self, groups: Sequence[ReflectionGroup]
    ) -> tuple[ReflectionBatch, dict[str, float]]:
        """The learner's batch (engine token ids, group-baseline advantages) and reward stats;
        the distributed learner takes the same batch (``retro_ray.learner.online``)."""
        rewards = [r for g in groups for r in g.rewards]
        group_ids = [i for i, g in enumerate(groups) for _ in g.rewards]
        advantages, stats = compute_advantages(
            self.learner.advantage_estimator,
            torch.tensor(rewards),
            torch.tensor(group_ids),
            normalize_std=self.learner.normalize_std,
        )
        prompt_ids = self.policy.prompt_ids([g.failed.prompt for g in groups])
        batch = ReflectionBatch.from_token_lists(
            [p for p, g in zip(prompt_ids, groups, strict=True) for _ in g.reflections],
            [ids for g in groups for ids in g.token_ids],
            advantages,
            group_ids,
            pad_id=self.policy.pad_token_id,
            rewards=rewards,
            old_logprobs=[lp for g in groups for lp in g.logprobs],
        )
        return batch, stats

    async def mean_rewards(self, failed: Sequence[FailedTrial], samples: int) -> list[float]:
        """Per failed trial, the mean reward of ``samples`` reflections from the current policy
        (an evaluation: nothing is learned)."""
        groups = self.sample_groups(failed, samples)
        await self.runner.score_groups(groups)
        return [sum(g.rewards) / len(g.rewards) for g in groups]
