"""Actors: who chooses the next action. The LLM actor (ReAct over any LLM client) and the reference
policies of benchmark environments (expert, random, the scripted reflection-follower)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from retro_ray.agents.prompts import ParsedAction, actor_prompt, parse_action
from retro_ray.envs.base import TextEnv, Trajectory
from retro_ray.envs.benchmark import BenchmarkEnv, ScriptedActorEnv
from retro_ray.llm.base import Completion, LLMClient, SamplingParams, seeded


@dataclass(frozen=True)
class ActorTurn:
    parsed: ParsedAction
    completion: Completion | None = None  # the LLM call behind it, for token and cost accounting


class Actor(Protocol):
    async def act(
        self, env: TextEnv, trajectory: Trajectory, reflections: Sequence[str], seed: str
    ) -> ActorTurn:
        """The next action. ``seed`` identifies (run, task, trial, memory) for reproducible
        randomness of rule-based policies."""
        ...


class LLMActor:
    """A ReAct actor: the prompt holds the instruction, the reflections, the task and the
    trajectory so far; the model answers with one action line."""

    def __init__(
        self,
        client: LLMClient,
        sampling: SamplingParams,
        instruction: str,
        scratchpad_max_chars: int,
        few_shot: str | None = None,
    ) -> None:
        self.client = client
        self.sampling = sampling
        self.instruction = instruction
        self.scratchpad_max_chars = scratchpad_max_chars
        self.few_shot = few_shot

    async def act(
        self, env: TextEnv, trajectory: Trajectory, reflections: Sequence[str], seed: str
    ) -> ActorTurn:
        prompt = actor_prompt(
            self.instruction, trajectory, reflections, self.scratchpad_max_chars, self.few_shot
        )
        # Each step of each trial draws its own sample: retries are independent, reruns identical.
        key = f"{seed}|trial{trajectory.trial}|step{len(trajectory.steps)}"
        (completion,) = await self.client.generate([prompt], seeded(self.sampling, key))
        return ActorTurn(parse_action(completion.text), completion)


class ExpertActor:
    async def act(
        self, env: TextEnv, trajectory: Trajectory, reflections: Sequence[str], seed: str
    ) -> ActorTurn:
        return ActorTurn(ParsedAction("action", _benchmark(env).expert_action()))


class RandomActor:
    async def act(
        self, env: TextEnv, trajectory: Trajectory, reflections: Sequence[str], seed: str
    ) -> ActorTurn:
        rng = random.Random(f"{seed}|step{len(trajectory.steps)}")
        return ActorTurn(ParsedAction("action", _benchmark(env).random_action(rng)))


class ScriptedActor:
    """The environment's rule-based actor, which follows the advice in reflections. Its random
    tie-breaks are seeded by (task, reflections): with no reflection it repeats itself."""

    async def act(
        self, env: TextEnv, trajectory: Trajectory, reflections: Sequence[str], seed: str
    ) -> ActorTurn:
        if not isinstance(env, ScriptedActorEnv):
            raise TypeError(f"{type(env).__name__} has no scripted actor (built-in envs do)")
        rng = random.Random(f"{seed}|step{len(trajectory.steps)}")
        return ActorTurn(ParsedAction("action", env.scripted_action(reflections, rng)))


def _benchmark(env: TextEnv) -> BenchmarkEnv:
    if not isinstance(env, BenchmarkEnv):
        raise TypeError(f"{type(env).__name__} has no expert or random policy")
    return env


def expert_demonstration(env: BenchmarkEnv) -> str:
    """One expert trial on a train (else validation) task, rendered as prompt text: the few-shot
    example for real LLMs. Never a test task: that would leak the evaluation set."""
    task = None
    for split in ("train", "validation"):
        try:
            task = env.tasks(split, 1)[0]
            break
        except (ValueError, IndexError):
            continue
    if task is None:
        raise ValueError(
            f"actor.few_shot: {type(env).__name__} has no train or validation task to draw a "
            "demonstration from; set actor.few_shot=false or use a data file with a train split"
        )
    trajectory = Trajectory(task=task, trial=0, first_observation=env.reset(task))
    lines = [trajectory.first_observation]
    for _ in range(env.max_steps):
        action = env.expert_action()
        result = env.step(action)
        lines.append(f"> {action}\n{result.observation}")
        if result.done:
            break
    return "\n".join(lines)
