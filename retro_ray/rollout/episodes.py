"""One episode (one task, all its trials) as plain asyncio code: what a rollout worker runs.

Two kinds of collection share this runner, the trial loop and the reflectors:

- **Evaluation** (``react``, ``reflexion``, ``retroformer``, the oracles): ``TrialLoop.run_task``
  unchanged, one reflection per failed trial, no branching.
- **Training** (mode ``train``), the Retroformer branching rule of docs/design.md: at each failed trial
  ``k`` of the main chain, ``m = train.group_size`` reflections are sampled from the ``train``
  adapter (temperature and top_p from ``train``, with token ids and log-probs); each gets exactly
  one trial ``k+1``, reward ``G(k+1) - G(k)``; the main chain continues with branch 0 (a sampled
  branch, not the best one: picking the best would bias the later trials). Cost per failed trial:
  ``m`` actor episodes.

The finished episode is written to the experience log here, in the worker, as one atomic file,
before its small summary is returned: results leave the worker one episode at a time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from retro_ray.agents.build import (
    AGENTS,
    build_trial_loop,
    config_for_agent,
    openai_client,
)
from retro_ray.agents.build import actor_client as build_actor_client
from retro_ray.agents.reflectors import LLMReflector, Reflection, Reflector
from retro_ray.agents.results import TrialRecord
from retro_ray.aio import gather_all
from retro_ray.config import Config
from retro_ray.envs.base import Task
from retro_ray.llm.base import (
    ChatClient,
    ChatMessage,
    Completion,
    LLMClient,
    RequestRejected,
    SamplingParams,
)
from retro_ray.reflection.groups import FailedTrial, ReflectionGroup
from retro_ray.registry import TRAIN_ALIAS
from retro_ray.rollout.branching import play_branches
from retro_ray.rollout.experience import ExperienceLog, ExperienceRow, now_utc

TRAIN_MODE = "train"
MODES: tuple[str, ...] = (TRAIN_MODE, *AGENTS)
TRAIN_ADAPTER = TRAIN_ALIAS
"""Alias of the learner's latest adapter on the retrospective server (collection samples it)."""

T = TypeVar("T")


@dataclass(frozen=True)
class EpisodeSpec:
    task: Task
    iteration: int
    attempt: int = 0  # earlier attempts that failed (worker crash, endpoint outage)


@dataclass(frozen=True)
class EpisodeSummary:
    """What travels back to the driver: small, whatever the episode's size."""

    task_id: str
    iteration: int
    rows: int  # trials played, branches included
    solved_at: int | None  # first won trial of the main chain
    mean_reward: float | None  # over the episode's reflections (None: none written)
    actor_tokens: int
    reflection_tokens: int
    duration_s: float
    attempt: int
    worker_pid: int


class EpisodeObserver(Protocol):
    """Receives what metrics need; ``retro_ray.rollout.metrics`` has the Ray implementation."""

    def llm_call(self, role: str, completion: Completion) -> None: ...

    def episode_done(self, summary: EpisodeSummary, rows: Sequence[ExperienceRow]) -> None: ...


class MeteredClient:
    """An ``LLMClient`` that reports every completion (latency, tokens) to an observer."""

    def __init__(self, inner: LLMClient, role: str, observer: EpisodeObserver) -> None:
        self.inner, self.role, self.observer = inner, role, observer

    async def generate(self, prompts: Sequence[str], sampling: SamplingParams) -> list[Completion]:
        return self._report(await self.inner.generate(prompts, sampling))

    async def chat(
        self, conversations: Sequence[Sequence[ChatMessage]], sampling: SamplingParams
    ) -> list[Completion]:
        if not isinstance(self.inner, ChatClient):
            raise TypeError(f"{type(self.inner).__name__} takes no conversations (no chat)")
        return self._report(await self.inner.chat(conversations, sampling))

    def _report(self, completions: list[Completion]) -> list[Completion]:
        for completion in completions:
            self.observer.llm_call(self.role, completion)
        return completions


class EpisodeRunner:
    """Runs episodes of one collection mode and logs each one. Many run at once on one loop."""

    def __init__(
        self,
        cfg: Config,
        mode: str,
        run_id: str,
        log: ExperienceLog,
        *,
        actor_client: LLMClient | None = None,
        reflector_client: LLMClient | None = None,
        observer: EpisodeObserver | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown collection mode {mode!r}; expected one of {MODES}")
        self.cfg = cfg if mode == TRAIN_MODE else config_for_agent(cfg, mode)
        self.mode, self.run_id, self.log, self.observer = mode, run_id, log, observer
        self.built: list[LLMClient] = []  # clients made here (not given): aclose() closes them
        if self.cfg.actor.policy == "llm":
            if actor_client is None:
                actor_client = build_actor_client(cfg.actor)
                self.built.append(actor_client)
            actor_client = self._metered(actor_client, "actor")
        if self.cfg.reflector.kind == "llm":
            if reflector_client is None:
                reflector_client = openai_client(self.cfg.reflector.endpoint)
                self.built.append(reflector_client)
            reflector_client = self._metered(reflector_client, "reflector")
        self.loop = build_trial_loop(self.cfg, actor_client, reflector_client)
        self.reflector: Reflector | None = self.loop.reflector
        if mode == TRAIN_MODE and isinstance(self.reflector, LLMReflector):
            self.reflector = self._train_reflector(self.reflector)
        self.actor_model = (
            self.cfg.actor.endpoint.model
            if self.cfg.actor.policy == "llm"
            else self.cfg.actor.policy
        )

    def _metered(self, client: LLMClient, role: str) -> LLMClient:
        return client if self.observer is None else MeteredClient(client, role, self.observer)

    def _train_reflector(self, base: LLMReflector) -> LLMReflector:
        train = self.cfg.train
        sampling = dataclasses.replace(
            base.sampling,
            temperature=train.temperature,
            top_p=train.top_p,
            logprobs=True,
            adapter=TRAIN_ADAPTER,
        )
        return LLMReflector(
            base.client,
            sampling,
            base.instruction,
            base.trajectory_max_chars,
            base.max_chars,
            name=TRAIN_ADAPTER,
            prompt_format=base.prompt_format,
        )

    async def aclose(self) -> None:
        """Close the connections of the clients this runner made, on the running event loop
        (a client made for one ``asyncio.run`` must be closed before that loop ends)."""
        for client in self.built:
            aclose = getattr(client, "aclose", None)
            if aclose is not None:
                await aclose()

    async def run(self, spec: EpisodeSpec) -> EpisodeSummary:
        """Play the episode, write it to the log (atomically, one file), return its summary."""
        started, start = now_utc(), time.monotonic()
        if self.mode == TRAIN_MODE:
            rows = await self._branching(spec.task)
        else:
            rows = await self._evaluation(spec.task)
        finished = now_utc()
        for row in rows:
            row.started_at, row.finished_at, row.attempt = started, finished, spec.attempt
        await asyncio.to_thread(
            self.log.write_episode, self.run_id, spec.iteration, spec.task.task_id, rows
        )
        rewards = [r.reward for r in rows if r.reward is not None]
        summary = EpisodeSummary(
            task_id=spec.task.task_id,
            iteration=spec.iteration,
            rows=len(rows),
            solved_at=next((r.trial for r in rows if r.sample == 0 and r.won), None),
            mean_reward=sum(rewards) / len(rewards) if rewards else None,
            actor_tokens=sum(r.actor_prompt_tokens + r.actor_completion_tokens for r in rows),
            reflection_tokens=sum(
                r.reflection_prompt_tokens + r.reflection_completion_tokens for r in rows
            ),
            duration_s=time.monotonic() - start,
            attempt=spec.attempt,
            worker_pid=os.getpid(),
        )
        if self.observer is not None:
            self.observer.episode_done(summary, rows)
        return summary

    # -- evaluation: the trial loop as it is ------------------------------------------------

    async def _evaluation(self, task: Task) -> list[ExperienceRow]:
        result = await self.loop.run_task(task)
        rows = []
        for k, record in enumerate(result.trials):
            before = result.trials[k - 1] if k else None
            row = self._row(record, sample=0)
            if before is not None:
                row.return_before = before.score
                row.prompt, row.reflection = before.reflection_prompt, before.reflection
                row.reflection_prompt_tokens = before.reflector_prompt_tokens
                row.reflection_completion_tokens = before.reflector_completion_tokens
                if before.reflection is not None:
                    row.reward = record.score - before.score
                    row.adapter_version = self.reflector.name if self.reflector else None
            rows.append(row)
        return rows

    # -- training: the branching rule --------------------------------------------------------

    async def _branching(self, task: Task) -> list[ExperienceRow]:
        loop, m = self.loop, self.cfg.train.group_size
        env = loop.env_factory()
        record, trajectory = await loop.run_trial(env, task, 0, [])
        rows = [self._row(record, sample=0)]
        memory: list[str] = []
        for k in range(loop.max_trials - 1):
            if trajectory.won or self.reflector is None or _main_row(rows, k).failure:
                break  # won, nothing to reflect with, or the main chain stopped on bad input
            window = memory[-loop.memory_size :] if loop.memory_size else []
            seed = f"{loop.seed}|{task.task_id}|{k}"
            reflector = self.reflector
            try:
                timed = await gather_all(
                    [
                        _timed(reflector.reflect(env, trajectory, window, f"{seed}|{i}"))
                        for i in range(m)
                    ]
                )
            except RequestRejected as exc:  # bad input, not an outage: the episode stops here
                _main_row(rows, k).failure = f"reflector request rejected: {exc}"
                break
            reflections = [r for r, _ in timed]
            group = ReflectionGroup(
                failed=FailedTrial(task, trajectory, tuple(window), reflections[0].prompt),
                reflections=[r.text for r in reflections],
            )
            branches = await play_branches(loop, task, k + 1, memory, [r.text for r in reflections])
            group.returns_after = [b.trajectory.score for b in branches]
            for i, (branch, (reflection, seconds)) in enumerate(zip(branches, timed, strict=True)):
                row = self._row(branch.record, sample=i)
                row.return_before, row.reward = trajectory.score, group.rewards[i]
                _fill_reflection(row, reflection, seconds)
                rows.append(row)
            env, trajectory = branches[0].env, branches[0].trajectory  # main chain: branch 0
            memory.append(reflections[0].text)
        return rows

    def _row(self, record: TrialRecord, sample: int) -> ExperienceRow:
        return ExperienceRow(
            task_id=record.task_id,
            split=record.split,
            env=record.env,
            mode=self.mode,
            trial=record.trial,
            sample=sample,
            won=record.won,
            return_after=record.score,
            memory=list(record.reflections_in),
            actor_model=self.actor_model,
            steps=record.steps,
            invalid_actions=record.invalid_actions,
            trajectory=record.trajectory,
            actor_prompt_tokens=record.actor_prompt_tokens,
            actor_completion_tokens=record.actor_completion_tokens,
            cost=record.actor_cost,
            latency_s=record.duration_s,
            failure=record.failure,
        )


def _main_row(rows: Sequence[ExperienceRow], trial: int) -> ExperienceRow:
    """The main chain's row of ``trial`` (sample 0)."""
    return next(r for r in rows if r.trial == trial and r.sample == 0)


def _fill_reflection(row: ExperienceRow, reflection: Reflection, seconds: float) -> None:
    row.prompt, row.reflection, row.reflection_latency_s = (
        reflection.prompt,
        reflection.text,
        seconds,
    )
    completion = reflection.completion
    if completion is None:
        row.adapter_version = "code"
        return
    row.adapter_version = completion.model or TRAIN_ADAPTER
    row.adapter_version_number = completion.adapter_version
    row.reflection_prompt_token_ids = completion.prompt_token_ids
    row.reflection_token_ids = completion.token_ids
    row.reflection_logprobs = completion.logprobs
    row.reflection_prompt_tokens = completion.prompt_tokens
    row.reflection_completion_tokens = completion.completion_tokens
    row.cost += completion.cost


async def _timed(awaitable: Awaitable[T]) -> tuple[T, float]:
    start = time.monotonic()
    value = await awaitable
    return value, time.monotonic() - start
