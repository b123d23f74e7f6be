"""Reflection groups, measured: the Retroformer branching rule as plain asyncio code.

For a failed trial k of a task, ``m`` reflections are sampled from the policy; each gets exactly
one trial k+1 with the frozen actor, and its reward is ``G(k+1) - G(k)``. All ``m`` share the
reflection prompt ``x`` and ``G(k)``, so a group baseline cancels ``G(k)``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from retro_ray.agents.prompts import clean_reflection, reflection_prompt
from retro_ray.agents.results import TrialRecord
from retro_ray.agents.trial_loop import TrialLoop
from retro_ray.aio import gather_all
from retro_ray.config import ReflectorConfig
from retro_ray.envs.base import Task, TextEnv, Trajectory


@dataclass(frozen=True)
class FailedTrial:
    """A failed trial of the main chain: what the reflector reads."""

    task: Task
    trajectory: Trajectory
    memory: tuple[str, ...]  # reflections the actor saw in this trial
    prompt: str  # the reflection prompt x

    @property
    def return_before(self) -> float:
        return self.trajectory.score


@dataclass
class ReflectionGroup:
    failed: FailedTrial
    reflections: list[str]
    returns_after: list[float] = field(default_factory=list)
    token_ids: list[list[int]] = field(default_factory=list)  # from the sampler, per reflection
    logprobs: list[list[float]] = field(default_factory=list)  # sampler's, per reflection token

    @property
    def rewards(self) -> list[float]:
        return [g - self.failed.return_before for g in self.returns_after]


@dataclass(frozen=True)
class Branch:
    """One next trial played with one reflection: the environment stays with it, so the main
    chain can continue from branch 0."""

    env: TextEnv
    record: TrialRecord
    trajectory: Trajectory


async def play_branches(
    loop: TrialLoop, task: Task, k: int, memory: Sequence[str], reflections: Sequence[str]
) -> list[Branch]:
    """The branching step: one trial ``k`` per reflection, each with the long-term memory plus
    that reflection (the last ``memory_size``), all at once."""

    async def play(reflection: str) -> Branch:
        env = loop.env_factory()
        mine = [*memory, reflection]
        window = mine[-loop.memory_size :] if loop.memory_size else []
        record, trajectory = await loop.run_trial(env, task, k, window)
        return Branch(env, record, trajectory)

    return await gather_all([play(r) for r in reflections])


class GroupRunner:
    """Runs first trials and scores reflections with the frozen actor, one loop per environment."""

    def __init__(self, loops: dict[str, TrialLoop], reflector: ReflectorConfig) -> None:
        self.loops = loops
        self.reflector = reflector

    def _loop(self, task: Task) -> TrialLoop:
        return self.loops[task.env]

    async def failed_trials(self, tasks: Sequence[Task], trial: int = 0) -> list[FailedTrial]:
        """Trial ``trial`` (no reflections) of every task; the failed ones, in task order."""

        async def run(task: Task) -> FailedTrial | None:
            loop = self._loop(task)
            _, trajectory = await loop.run_trial(loop.env_factory(), task, trial, [])
            if trajectory.won:
                return None
            prompt = reflection_prompt(
                self.reflector.instruction, trajectory, [], self.reflector.trajectory_max_chars
            )
            return FailedTrial(task, trajectory, (), prompt)

        results = await gather_all([run(t) for t in tasks])
        return [r for r in results if r is not None]

    def clean(self, text: str) -> str:
        return clean_reflection(text, self.reflector.max_chars)

    async def returns_after(self, failed: FailedTrial, reflections: Sequence[str]) -> list[float]:
        """G(k+1) of one next trial per reflection (the memory gains that reflection)."""
        loop = self._loop(failed.task)
        k = failed.trajectory.trial + 1
        cleaned = [self.clean(r) for r in reflections]
        branches = await play_branches(loop, failed.task, k, failed.memory, cleaned)
        return [b.trajectory.score for b in branches]

    async def score_groups(self, groups: Sequence[ReflectionGroup]) -> None:
        """Fill ``returns_after`` of every group, all next trials concurrently."""
        scored = await asyncio.gather(
            *(self.returns_after(g.failed, g.reflections) for g in groups)
        )
        for group, returns in zip(groups, scored, strict=True):
            group.returns_after = returns
