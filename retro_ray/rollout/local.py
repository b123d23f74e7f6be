"""Collection in the driver's process: the rollout worker's episodes on one event loop, no Ray.

:class:`LocalCollector` has the part of :class:`~retro_ray.rollout.pool.RolloutPool` that the
training loop (``retro_ray.driver.loop``) uses: ``collect(tasks, iteration)`` plays every task's
episode with the same :class:`~retro_ray.rollout.episodes.EpisodeRunner` (in mode ``train``: the
branching rule at every failed trial of the main chain) and writes it to the same Parquet
experience log (``log``), then returns a :class:`~retro_ray.rollout.pool.CollectionReport`. The
LLM clients are given (in-process torch backends: the learning proof), so nothing is served over
HTTP; episodes of a collection run at once, up to ``trials.concurrency``, which lets the torch
backends merge their requests into batches.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from retro_ray.aio import gather_all
from retro_ray.config import Config
from retro_ray.envs.base import Task
from retro_ray.llm.base import LLMClient
from retro_ray.rollout.episodes import TRAIN_MODE, EpisodeRunner, EpisodeSpec, EpisodeSummary
from retro_ray.rollout.experience import ExperienceLog
from retro_ray.rollout.pool import CollectionReport


class LocalCollector:
    """Plays episodes of ``run_id`` on an event loop of its own, one per collection: training
    episodes by default, or those of another collection ``mode`` (``benchmarks.rollout`` runs its
    evaluation mode here to compare one process with the pool). A client left ``None`` is built
    from the config's endpoint, as a rollout worker builds it."""

    def __init__(
        self,
        cfg: Config,
        run_id: str,
        log: ExperienceLog,
        *,
        actor_client: LLMClient | None,
        reflector_client: LLMClient | None,
        mode: str = TRAIN_MODE,
    ) -> None:
        self.cfg, self.run_id, self.log = cfg, run_id, log
        self.runner = EpisodeRunner(
            cfg,
            mode,
            run_id,
            log,
            actor_client=actor_client,
            reflector_client=reflector_client,
        )

    def collect(self, tasks: Sequence[Task], iteration: int) -> CollectionReport:
        """Every task's episode not in the log yet (a resumed iteration keeps what it finished)."""
        start = time.monotonic()
        done = self.log.finished_tasks(self.run_id, iteration)
        todo = [t for t in tasks if t.task_id not in done]
        summaries = asyncio.run(self._play(todo, iteration))
        return CollectionReport(
            summaries=summaries,
            resumed=len(tasks) - len(todo),
            seconds=time.monotonic() - start,
        )

    async def _play(self, tasks: Sequence[Task], iteration: int) -> list[EpisodeSummary]:
        semaphore = asyncio.Semaphore(self.cfg.trials.concurrency)

        async def one(task: Task) -> EpisodeSummary:
            async with semaphore:
                return await self.runner.run(EpisodeSpec(task, iteration))

        try:
            return await gather_all([one(t) for t in tasks])
        finally:
            await self.runner.aclose()  # the clients it made belong to this collection's loop
