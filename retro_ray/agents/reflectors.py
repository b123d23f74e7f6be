"""Reflectors: who writes the reflection after a failed trial.

``LLMReflector`` is the retrospective model (Reflexion: a frozen model, possibly the actor itself;
Retroformer: the trained adapter). The code reflectors of benchmark environments frame what a
learned reflector can reach: the trajectory oracle (the real ceiling), the ground-truth oracle (an
upper bound only) and the vague reflector (true but useless).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from retro_ray.envs.base import TextEnv, Trajectory
from retro_ray.envs.benchmark import BenchmarkEnv
from retro_ray.llm.base import Completion, LLMClient, SamplingParams, seeded
from retro_ray.reflection.prompt import clean_reflection, reflection_prompt


@dataclass(frozen=True)
class Reflection:
    text: str
    prompt: str = ""  # what the reflector saw (the input x of the policy gradient)
    completion: Completion | None = None  # token ids, log-probs, usage of the LLM call


class Reflector(Protocol):
    name: str

    async def reflect(
        self, env: TextEnv, trajectory: Trajectory, memory: Sequence[str], seed: str
    ) -> Reflection: ...


class LLMReflector:
    def __init__(
        self,
        client: LLMClient,
        sampling: SamplingParams,
        instruction: str,
        trajectory_max_chars: int,
        max_chars: int,
        name: str = "llm",
    ) -> None:
        self.client = client
        self.sampling = sampling
        self.instruction = instruction
        self.trajectory_max_chars = trajectory_max_chars
        self.max_chars = max_chars
        self.name = name

    async def reflect(
        self, env: TextEnv, trajectory: Trajectory, memory: Sequence[str], seed: str
    ) -> Reflection:
        prompt = reflection_prompt(self.instruction, trajectory, memory, self.trajectory_max_chars)
        (completion,) = await self.client.generate([prompt], seeded(self.sampling, seed))
        return Reflection(clean_reflection(completion.text, self.max_chars), prompt, completion)


class TrajectoryOracleReflector:
    name = "trajectory_oracle"

    async def reflect(
        self, env: TextEnv, trajectory: Trajectory, memory: Sequence[str], seed: str
    ) -> Reflection:
        return Reflection(_benchmark(env).trajectory_oracle(trajectory, memory))


class GroundTruthReflector:
    name = "ground_truth_oracle"

    async def reflect(
        self, env: TextEnv, trajectory: Trajectory, memory: Sequence[str], seed: str
    ) -> Reflection:
        return Reflection(_benchmark(env).ground_truth_reflection(trajectory.task))


class VagueReflector:
    name = "vague"

    async def reflect(
        self, env: TextEnv, trajectory: Trajectory, memory: Sequence[str], seed: str
    ) -> Reflection:
        rng = random.Random(f"{seed}|vague")
        return Reflection(_benchmark(env).vague_reflection(trajectory, rng))


def _benchmark(env: TextEnv) -> BenchmarkEnv:
    if not isinstance(env, BenchmarkEnv):
        raise TypeError(
            f"{type(env).__name__} has no oracle reflectors; use reflector.kind=llm for it"
        )
    return env
