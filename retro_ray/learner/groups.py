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
from retro_ray.agents.trial_loop import TrialLoop
from retro_ray.config import ReflectorConfig
from retro_ray.envs.base import Task, Trajectory


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

        results = await asyncio.gather(*(run(t) for t in tasks))
        return [r for r in results if r is not None]

    def clean(self, text: str) -> str:
        return clean_reflection(text, self.reflector.max_chars)

    async def returns_after(self, failed: FailedTrial, reflections: Sequence[str]) -> list[float]:
        """G(k+1) of one next trial per reflection (the memory gains that reflection)."""
        loop = self._loop(failed.task)
        k = failed.trajectory.trial + 1

        async def run(reflection: str) -> float:
            memory = [*failed.memory, self.clean(reflection)][-max(1, loop.memory_size) :]
            _, trajectory = await loop.run_trial(loop.env_factory(), failed.task, k, memory)
            return trajectory.score

        return list(await asyncio.gather(*(run(r) for r in reflections)))

    async def score_groups(self, groups: Sequence[ReflectionGroup]) -> None:
        """Fill ``returns_after`` of every group, all next trials concurrently."""
        scored = await asyncio.gather(
            *(self.returns_after(g.failed, g.reflections) for g in groups)
        )
        for group, returns in zip(groups, scored, strict=True):
            group.returns_after = returns
