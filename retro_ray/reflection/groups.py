"""Reflection groups as plain data: what the rollouts fill and the learner batches.

For a failed trial k of a task, ``m`` reflections are sampled from the policy; each gets exactly
one trial k+1 with the frozen actor, and its reward is ``G(k+1) - G(k)``. All ``m`` share the
reflection prompt ``x`` and ``G(k)``, so a group baseline cancels ``G(k)``. Playing the branches is
``retro_ray.rollout.branching``; turning groups into a batch is the learner's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
