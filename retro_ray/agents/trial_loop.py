"""The trial loop (Reflexion / Retroformer inference): act, fail, reflect, retry.

For each task: run trial k with the actor; if it is won, stop (success is cumulative); otherwise
the reflector writes a reflection from the failed trajectory, it joins the long-term memory (the
last ``memory_size`` reflections go into the next prompt), and trial k+1 starts. Many tasks run at
once as asyncio tasks; the LLM clients bound their own concurrency.

An ``EndpointError`` (an LLM endpoint that stayed down after its retries) is never recorded as a
failed trial: it stops the run, and the tasks already finished stay in the results log.

Deterministic bad input is the opposite case: a request the endpoint rejects for what it holds
(``RequestRejected``: a prompt past the context window) or an LLM reflector that writes nothing.
Retrying cannot help and the endpoint is fine, so the task stops there, counted as unsolved, with
the reason in ``TrialRecord.failure``, and the other tasks go on.

Environment calls: ``reset`` and ``step`` are synchronous. An environment that does I/O (WebShop's
HTTP requests and their retry sleeps, ALFWorld's game loading) declares ``blocking_io = True`` and
its calls run in a thread pool, so the event loop keeps serving the other episodes meanwhile; one
whose engine is not thread-safe also names an ``io_lock`` (a ``threading.Lock``) that its calls
hold. The pure-Python built-in environments answer in 2-10 us, a thread hop costs 60-100 us
(measured on the CI machine), so they stay on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from retro_ray.agents.actors import Actor
from retro_ray.agents.reflectors import Reflector
from retro_ray.agents.results import TaskResult, TrialRecord
from retro_ray.aio import gather_all
from retro_ray.envs.base import Step, Task, TextEnv, Trajectory
from retro_ray.llm.base import RequestRejected

THINK_OBSERVATION = "OK."
DEFAULT_MAX_STEPS = 30
ENV_IO_THREADS = 64
"""Threads for environments with ``blocking_io`` (made on demand): more than a worker's episode
slots, so a slow server never queues calls behind each other in the default executor (whose
size follows the CPU count: 6 threads on 2 cores)."""

T = TypeVar("T")
_env_io: ThreadPoolExecutor | None = None


async def env_call(env: TextEnv, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` of ``env``: in a thread when the environment does blocking I/O, else here."""
    if not getattr(env, "blocking_io", False):
        return fn(*args)
    global _env_io
    if _env_io is None:
        _env_io = ThreadPoolExecutor(ENV_IO_THREADS, thread_name_prefix="env-io")
    lock = getattr(env, "io_lock", None)

    def call() -> T:
        with lock if lock is not None else contextlib.nullcontext():
            return fn(*args)

    return await asyncio.get_running_loop().run_in_executor(_env_io, call)


@dataclass
class TrialLoop:
    env_factory: Callable[[], TextEnv]
    actor: Actor
    reflector: Reflector | None  # None: ReAct, no reflections
    max_trials: int = 5
    memory_size: int = 3
    max_steps: int | None = None  # None: the environment's own limit
    seed: int = 0

    async def run_task(self, task: Task) -> TaskResult:
        env = self.env_factory()
        result = TaskResult(task_id=task.task_id, env=task.env, split=task.split)
        memory: list[str] = []
        for k in range(self.max_trials):
            reflections = memory[-self.memory_size :] if self.memory_size else []
            record, trajectory = await self.run_trial(env, task, k, reflections)
            result.trials.append(record)
            if trajectory.won or record.failure:
                break
            if self.reflector is None or k == self.max_trials - 1:
                continue
            seed = f"{self.seed}|{task.task_id}|{k}"
            try:
                reflection = await self.reflector.reflect(env, trajectory, reflections, seed)
            except RequestRejected as exc:
                record.failure = f"reflector request rejected: {exc}"
                break
            if not reflection.text and reflection.completion is not None:
                record.failure = (
                    "the reflector returned an empty reflection "
                    f"(finish reason {reflection.completion.finish_reason!r})"
                )
                record.reflection_prompt = reflection.prompt or None
                break
            memory.append(reflection.text)
            record.reflection = reflection.text
            record.reflection_prompt = reflection.prompt or None
            if reflection.completion is not None:
                record.reflector_prompt_tokens = reflection.completion.prompt_tokens
                record.reflector_completion_tokens = reflection.completion.completion_tokens
        return result

    async def run_trial(
        self, env: TextEnv, task: Task, k: int, reflections: Sequence[str]
    ) -> tuple[TrialRecord, Trajectory]:
        start = time.monotonic()
        if self.max_steps is not None and hasattr(env, "max_steps"):
            env.max_steps = self.max_steps  # type: ignore[attr-defined]
        first = await env_call(env, env.reset, task)
        # After reset: a mixture's limit is that of the task's own family.
        limit = self.max_steps or getattr(env, "max_steps", DEFAULT_MAX_STEPS)
        trajectory = Trajectory(task=task, trial=k, first_observation=first)
        record = TrialRecord(
            task_id=task.task_id,
            env=task.env,
            split=task.split,
            trial=k,
            won=False,
            score=0.0,
            steps=0,
            invalid_actions=0,
            trajectory="",
            reflections_in=list(reflections),
        )
        # Rule-based policies draw their tie-breaks from this seed: same task and memory, same play.
        seed = f"{self.seed}|{task.task_id}|" + "|".join(reflections)
        for _ in range(limit):
            try:
                turn = await self.actor.act(env, trajectory, reflections, seed)
            except RequestRejected as exc:  # this trial's prompt: the task cannot go on
                record.failure = f"actor request rejected: {exc}"
                break
            if turn.completion is not None:
                record.actor_prompt_tokens += turn.completion.prompt_tokens
                record.actor_completion_tokens += turn.completion.completion_tokens
                record.actor_cost += turn.completion.cost
            parsed = turn.parsed
            if parsed.kind == "think":
                trajectory.steps.append(Step(f"Think: {parsed.text}", THINK_OBSERVATION, 0.0))
                continue
            if parsed.kind == "invalid":
                record.invalid_actions += 1
                raw = turn.completion.text.strip()[:80] if turn.completion else ""
                trajectory.steps.append(Step(raw, parsed.text, 0.0))
                continue
            outcome = await env_call(env, env.step, parsed.text)
            trajectory.steps.append(Step(parsed.text, outcome.observation, outcome.reward))
            trajectory.won = bool(outcome.info.get("won", False))
            trajectory.score = float(outcome.info.get("score", outcome.reward))
            if outcome.done:
                trajectory.done = True
                break
        record.won, record.score = trajectory.won, trajectory.score
        record.steps = len(trajectory.steps)
        record.trajectory = trajectory.render()
        record.duration_s = time.monotonic() - start
        return record, trajectory

    async def run_tasks(
        self,
        tasks: Sequence[Task],
        concurrency: int,
        on_result: Callable[[TaskResult], None] | None = None,
    ) -> list[TaskResult]:
        """Run every task, at most ``concurrency`` at once; ``on_result`` sees each as it ends.
        The first error cancels the rest and propagates; finished tasks were already reported."""
        semaphore = asyncio.Semaphore(concurrency)

        async def one(task: Task) -> TaskResult:
            async with semaphore:
                result = await self.run_task(task)
            if on_result is not None:
                on_result(result)
            return result

        return await gather_all([one(t) for t in tasks])
