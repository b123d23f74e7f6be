"""What a benchmark environment offers beyond the text protocol: a task list, an expert, reference
policies and the code reflectors that frame what a learned reflector can achieve.

Built-in environments, HotPotQA and ALFWorld implement ``BenchmarkEnv``. A user's own environment
only needs ``TextEnv`` plus ``tasks``; the oracle reflectors are then unavailable.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Sequence

from retro_ray.envs.base import StepResult, Task, Trajectory


class BenchmarkEnv(ABC):
    name: str = ""
    max_steps: int = 10
    """Step limit of one trial; the trial loop may lower or raise it from config."""

    @abstractmethod
    def tasks(self, split: str, n: int, seed: int = 0) -> list[Task]:
        """The first ``n`` tasks of ``split`` (deterministic for a given seed)."""

    @abstractmethod
    def reset(self, task: Task) -> str: ...

    @abstractmethod
    def step(self, action: str) -> StepResult: ...

    @abstractmethod
    def expert_action(self) -> str:
        """The optimal next action in the current state (may use the hidden solution)."""

    @abstractmethod
    def random_action(self, rng: random.Random) -> str:
        """A uniformly random well-formed action (a lower reference)."""

    @abstractmethod
    def trajectory_oracle(self, trajectory: Trajectory, memory: Sequence[str]) -> str:
        """The most useful reflection derivable from what the failed trial (and the earlier
        reflections) revealed: what was tried and ruled out, what to do instead."""

    @abstractmethod
    def ground_truth_reflection(self, task: Task) -> str:
        """A reflection written from the hidden solution: an upper bound, never a baseline."""

    def vague_reflection(self, trajectory: Trajectory, rng: random.Random) -> str:
        """True but useless advice."""
        return rng.choice(VAGUE_REFLECTIONS)


class ScriptedActorEnv(BenchmarkEnv):
    """A benchmark environment that also ships a rule-based actor (the built-in ones)."""

    @abstractmethod
    def scripted_action(self, reflections: Sequence[str], rng: random.Random) -> str:
        """A rule-based actor that sees only what an LLM actor sees (the observations so far and
        the reflections) and follows the advice the reflections carry. It breaks ties with ``rng``,
        which the trial loop seeds from the task and the reflections, so that with no reflection it
        repeats the same choices trial after trial, as a greedy LLM does."""

    @abstractmethod
    def misleading_reflection(self, trajectory: Trajectory, rng: random.Random) -> str:
        """Confident, wrong advice derived from the trajectory alone, in the surface forms of
        ``trajectory_oracle``: the zoo's negative examples, so that a retrospective base samples
        reflections of varied quality and the scripted actor's demonstrations show acting on
        bad advice too (the form alone must not tell good advice from bad)."""


VAGUE_REFLECTIONS = (
    "I failed. I should be more careful next time.",
    "That did not work. I will think harder and try again.",
    "I made a mistake somewhere. Next time I will check my steps.",
    "The plan was not good enough. I need a better plan.",
)
