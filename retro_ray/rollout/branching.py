"""The Retroformer branching rule as plain asyncio code: one next trial per reflection.

For a failed trial k of a task, each of the ``m`` reflections sampled for it gets exactly one
trial k+1 with the frozen actor, and its reward is ``G(k+1) - G(k)`` (the groups themselves are
plain data, ``retro_ray.reflection.groups``). The rollout worker's training episodes branch with
:func:`play_branches` (``retro_ray.rollout.episodes``); :class:`GroupRunner` plays first trials
and scores sampled groups in one process (the learning proof).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from retro_ray.agents.results import TrialRecord
from retro_ray.agents.trial_loop import TrialLoop
from retro_ray.aio import gather_all
from retro_ray.config import ReflectorConfig
from retro_ray.envs.base import Task, TextEnv, Trajectory
from retro_ray.reflection.groups import FailedTrial, ReflectionGroup
from retro_ray.reflection.prompt import clean_reflection, reflection_prompt


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
