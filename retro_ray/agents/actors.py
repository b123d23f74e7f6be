"""Actors: who chooses the next action. The LLM actor (ReAct over any LLM client) and the reference
policies of benchmark environments (expert, random, the scripted reflection-follower)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from retro_ray.agents.prompts import ParsedAction, actor_messages, actor_prompt, parse_action
from retro_ray.envs.base import Step, TextEnv, Trajectory
from retro_ray.envs.benchmark import BenchmarkEnv, ScriptedActorEnv
from retro_ray.llm.base import ChatClient, Completion, LLMClient, SamplingParams, seeded


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
        sampling = step_sampling(self.sampling, trajectory, seed)
        (completion,) = await self.client.generate([prompt], sampling)
        return ActorTurn(parse_action(completion.text), completion)


class ChatActor:
    """A ReAct actor behind a chat API: the scratchpad as turns (``prompts.actor_messages``):
    the instruction and the reflections as the system turn, the few-shot example as the turns it
    was played in, the actor's past actions as assistant turns and the observations as user
    turns. The model's reply is parsed as one action line, as ``LLMActor``'s."""

    def __init__(
        self,
        client: ChatClient,
        sampling: SamplingParams,
        instruction: str,
        scratchpad_max_chars: int,
        few_shot: Trajectory | None = None,
    ) -> None:
        self.client = client
        self.sampling = sampling
        self.instruction = instruction
        self.scratchpad_max_chars = scratchpad_max_chars
        self.few_shot = few_shot

    async def act(
        self, env: TextEnv, trajectory: Trajectory, reflections: Sequence[str], seed: str
    ) -> ActorTurn:
        messages = actor_messages(
            self.instruction, trajectory, reflections, self.scratchpad_max_chars, self.few_shot
        )
        sampling = step_sampling(self.sampling, trajectory, seed)
        (completion,) = await self.client.chat([messages], sampling)
        return ActorTurn(parse_action(completion.text), completion)


def step_sampling(sampling: SamplingParams, trajectory: Trajectory, seed: str) -> SamplingParams:
    """Each step of each trial draws its own sample: retries are independent, reruns identical."""
    return seeded(sampling, f"{seed}|trial{trajectory.trial}|step{len(trajectory.steps)}")


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
    trajectory = expert_trajectory(env)
    return "\n".join([trajectory.first_observation, trajectory.render()])


def expert_trajectory(env: BenchmarkEnv) -> Trajectory:
    """The expert trial of ``expert_demonstration`` as steps (the chat actor's example turns)."""
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
    for _ in range(env.max_steps):
        action = env.expert_action()
        result = env.step(action)
        trajectory.steps.append(Step(action, result.observation, result.reward))
        if result.done:
            break
    return trajectory
