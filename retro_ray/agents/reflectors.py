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
from typing import Literal, Protocol

from retro_ray.envs.base import TextEnv, Trajectory
from retro_ray.envs.benchmark import BenchmarkEnv
from retro_ray.llm.base import ChatClient, Completion, LLMClient, SamplingParams, seeded
from retro_ray.reflection.prompt import clean_reflection, reflection_messages, reflection_prompt

PromptFormat = Literal["chat", "completion"]


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
    """The retrospective model. ``prompt_format`` is the model's language: ``completion`` sends
    the reflection prompt as text ending in ``Reflection:`` and stops at a newline; ``chat``
    sends it as a system and a user turn (the client applies the model's chat template: our
    engines locally, ``/v1/chat/completions`` through an endpoint) and the reply ends at the
    model's end-of-turn token. Either way the completion carries the engine's prompt and sampled
    token ids, which the learner trains on as they are."""

    def __init__(
        self,
        client: LLMClient,
        sampling: SamplingParams,
        instruction: str,
        trajectory_max_chars: int,
        max_chars: int,
        name: str = "llm",
        prompt_format: PromptFormat = "completion",
    ) -> None:
        if prompt_format == "chat" and not isinstance(client, ChatClient):
            raise TypeError(
                f"reflector.prompt_format is chat but {type(client).__name__} takes no "
                "conversations; use prompt_format: completion or a chat-capable client"
            )
        self.client = client
        self.sampling = sampling
        self.instruction = instruction
        self.trajectory_max_chars = trajectory_max_chars
        self.max_chars = max_chars
        self.name = name
        self.prompt_format: PromptFormat = prompt_format

    async def reflect(
        self, env: TextEnv, trajectory: Trajectory, memory: Sequence[str], seed: str
    ) -> Reflection:
        prompt = reflection_prompt(self.instruction, trajectory, memory, self.trajectory_max_chars)
        sampling = seeded(self.sampling, seed)
        if self.prompt_format == "chat":
            assert isinstance(self.client, ChatClient)
            messages = reflection_messages(
                self.instruction, trajectory, memory, self.trajectory_max_chars
            )
            (completion,) = await self.client.chat([messages], sampling)
        else:
            (completion,) = await self.client.generate([prompt], sampling)
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
