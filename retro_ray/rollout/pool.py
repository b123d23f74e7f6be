"""``RolloutPool``: episodes spread over a pool of ``RolloutWorker`` actors, from the driver.

The driver keeps a queue of episodes and tops every live worker up to ``episodes_per_worker`` in
flight; each episode is its own Ray call, so results (and the log file behind each) leave a worker
one episode at a time. Failures are sorted, never swallowed:

- **A worker dies** (``RayActorError``: killed, OOM, node lost): its unfinished episodes go back to
  the queue (``attempt + 1``, at most ``max_episode_attempts``) and the worker gets no new work
  until a health check answers from its restarted incarnation. A worker out of restarts is dropped;
  with none left the collection fails. Episodes finished before the crash are already on disk.
- **An endpoint outage** (``EndpointError``, after the client's own retries): the episode goes back
  to the queue and dispatch pauses, doubling the pause after each further outage (episodes already
  in flight finish or fail on their own). After ``max_outage_retries`` pauses in a row it gives up
  and raises, keeping what finished.
- **Anything else** (a bug) propagates at once.

Exactly-once is the log's job (one deterministic file per episode, renamed into place), so a
retry may replay an episode whose file a dying worker had already written: it replaces it whole.
A collection resumes from the log: tasks whose file exists are skipped. When the queue is empty it
checks the log once more (an unreadable file is quarantined there, and its task is played again)
and then **fences** the iteration: an attempt that was given up on but is still running somewhere
(an unreachable, not dead, worker) cannot change the log after ``collect`` returns and the driver
reads it. A collection that still has episodes to play opens its iteration again first.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, RayActorError

from retro_ray.config import Config
from retro_ray.envs.base import Task
from retro_ray.llm.base import EndpointError
from retro_ray.rollout.episodes import EpisodeSpec, EpisodeSummary
from retro_ray.rollout.experience import ExperienceLog
from retro_ray.rollout.metrics import PoolMetrics
from retro_ray.rollout.worker import make_worker

WAIT_S = 0.2  # longest sleep of the dispatch loop (bounds the reaction to a pause ending)


@dataclass
class _Slot:
    handle: Any
    running: int = 0
    alive: bool = True
    health_check: Any = None  # ObjectRef of ``ready()`` while recovering from a crash
    crashes: int = 0


@dataclass
class CollectionReport:
    """What one ``collect`` did; the episodes themselves are in the experience log."""

    summaries: list[EpisodeSummary] = field(default_factory=list)
    resumed: int = 0  # tasks skipped because the log already held them
    retried: int = 0  # episodes sent again after a worker crash or an outage
    worker_crashes: int = 0
    outage_pauses: int = 0
    failed_requests: int = 0  # requests that failed for good (``EndpointError``): episode again
    seconds: float = 0.0

    @property
    def success_rate(self) -> float:
        done = self.summaries
        return sum(s.solved_at is not None for s in done) / len(done) if done else 0.0


class RolloutPool:
    """Workers for one (run, collection mode); reuse it across iterations, ``close`` at the end."""

    def __init__(
        self, cfg: Config, mode: str, run_id: str, log_root: str | Path, *, progress: bool = True
    ) -> None:
        self.cfg, self.mode, self.run_id = cfg, mode, run_id
        self.rollout = cfg.rollout
        self.log = ExperienceLog(log_root)
        self.progress = progress
        root = str(Path(log_root).resolve())
        self.slots = [
            _Slot(make_worker(self.rollout, cfg, mode, run_id, root))
            for _ in range(self.rollout.num_workers)
        ]

    @property
    def handles(self) -> list[Any]:
        return [s.handle for s in self.slots]

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        ray.get([s.handle.ready.remote() for s in self.slots], timeout=timeout_s)

    def close(self) -> None:
        for slot in self.slots:
            ray.kill(slot.handle, no_restart=True)
        self.slots = []

    def __enter__(self) -> RolloutPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def collect(
        self,
        tasks: Sequence[Task],
        iteration: int = 0,
        on_episode: Callable[[EpisodeSummary], None] | None = None,
    ) -> CollectionReport:
        """Run every task of ``tasks`` not yet in the log for ``iteration``; block until done."""
        ids = [t.task_id for t in tasks]
        if len(set(ids)) != len(ids):
            raise ValueError("task ids must be unique within an iteration (they key the log)")
        start = time.monotonic()
        report = CollectionReport()
        finished = self.log.finished_tasks(self.run_id, iteration)
        queue = deque(EpisodeSpec(t, iteration) for t in tasks if t.task_id not in finished)
        report.resumed = len(tasks) - len(queue)
        meter = PoolMetrics(
            self.mode, len(tasks), label=f"{self.mode} it{iteration}", show=self.progress
        )
        meter.resumed(report.resumed)
        attempts = {t.task_id: 0 for t in tasks}
        while queue:
            self.log.unfence(self.run_id, iteration)
            self._play(queue, report, meter, attempts, on_episode)
            queue.extend(self._missing(tasks, iteration, attempts, report))
        self.log.fence(self.run_id, iteration)
        meter.state(0, 0)
        meter.maybe_print(force=True)
        report.seconds = time.monotonic() - start
        return report

    def _missing(
        self,
        tasks: Sequence[Task],
        iteration: int,
        attempts: dict[str, int],
        report: CollectionReport,
    ) -> list[EpisodeSpec]:
        """Tasks played but not readable in the log (a file quarantined on the way): again."""
        finished = self.log.finished_tasks(self.run_id, iteration)
        again = []
        for task in tasks:
            if task.task_id in finished:
                continue
            attempt = attempts[task.task_id] + 1
            if attempt >= self.rollout.max_episode_attempts:
                raise RuntimeError(
                    f"episode {task.task_id!r} of iteration {iteration} was played {attempt} "
                    "times and its log file is still not readable (see the quarantine warnings "
                    "above): check the disk or shared mount under the experience log"
                )
            print(
                f"[{self.mode} it{iteration}] episode {task.task_id!r} is not readable in the "
                f"log; playing it again (attempt {attempt})",
                file=sys.stderr,
                flush=True,
            )
            report.retried += 1
            again.append(EpisodeSpec(task, iteration, attempt))
        return again

    def _play(
        self,
        queue: deque[EpisodeSpec],
        report: CollectionReport,
        meter: PoolMetrics,
        attempts: dict[str, int],
        on_episode: Callable[[EpisodeSummary], None] | None,
    ) -> None:
        """Run the queue to the end over the pool, sorting failures (see the module doc)."""
        in_flight: dict[Any, tuple[_Slot, EpisodeSpec]] = {}
        paused_until, outages_in_row = 0.0, 0
        while queue or in_flight:
            now = time.monotonic()
            if now >= paused_until:
                self._dispatch(queue, in_flight)
            meter.state(len(queue), len(in_flight))
            checks = {s.health_check: s for s in self.slots if s.health_check is not None}
            refs = [*in_flight, *checks]
            if not refs:
                if not any(s.alive for s in self.slots):
                    raise RuntimeError("every rollout worker is dead (out of restarts)")
                time.sleep(min(WAIT_S, max(0.0, paused_until - now)))
                continue
            ready, _ = ray.wait(refs, num_returns=1, timeout=WAIT_S)
            if ready:  # take everything that is ready now, not one per loop
                ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            for ref in ready:
                if ref in checks:
                    self._health_checked(checks[ref], ref)
                    continue
                slot, spec = in_flight.pop(ref)
                slot.running -= 1
                try:
                    summary: EpisodeSummary = ray.get(ref)
                except RayActorError:
                    self._crashed(slot, meter, report)
                    queue.appendleft(self._retry(spec, report))
                    continue
                except EndpointError as exc:
                    self._request_failed(spec, exc, report)
                    queue.appendleft(EpisodeSpec(spec.task, spec.iteration, spec.attempt + 1))
                    report.retried += 1
                    if time.monotonic() < paused_until:
                        continue  # the same outage, already paused for
                    outages_in_row += 1
                    if outages_in_row > self.rollout.max_outage_retries:
                        raise
                    pause = min(
                        self.rollout.retry_backoff_s * 2 ** (outages_in_row - 1),
                        self.rollout.max_backoff_s,
                    )
                    paused_until = time.monotonic() + pause
                    report.outage_pauses += 1
                    meter.outages.inc(1, tags=meter.tags)
                    continue
                if time.monotonic() >= paused_until:
                    outages_in_row = 0
                attempts[spec.task.task_id] = spec.attempt
                report.summaries.append(summary)
                meter.episode(summary)
                if on_episode is not None:
                    on_episode(summary)

    def _request_failed(
        self, spec: EpisodeSpec, exc: EndpointError, report: CollectionReport
    ) -> None:
        """An endpoint request that failed after the client's retries: counted and said (the
        chaos run counts these lines in every driver's output, a killed driver's too)."""
        report.failed_requests += 1
        print(
            f"[{self.mode} it{spec.iteration}] episode {spec.task.task_id!r}: a request failed "
            f"for good ({exc}); the episode is played again",
            file=sys.stderr,
            flush=True,
        )

    def _dispatch(self, queue: deque[EpisodeSpec], in_flight: dict[Any, Any]) -> None:
        """Top every healthy worker up to its episode slots, the emptiest first."""
        ready = [s for s in self.slots if s.alive and s.health_check is None]
        cap = self.rollout.episodes_per_worker
        while queue and ready:
            slot = min(ready, key=lambda s: s.running)
            if slot.running >= cap:
                return
            spec = queue.popleft()
            in_flight[slot.handle.run_episode.remote(spec)] = (slot, spec)
            slot.running += 1

    def _crashed(self, slot: _Slot, meter: PoolMetrics, report: CollectionReport) -> None:
        """First failure of a crash: stop sending work there until a restarted worker answers."""
        if slot.health_check is None and slot.alive:
            slot.crashes += 1
            report.worker_crashes += 1
            meter.restarts.inc(1, tags=meter.tags)
            slot.health_check = slot.handle.ready.remote()

    def _health_checked(self, slot: _Slot, ref: Any) -> None:
        slot.health_check = None
        try:
            ray.get(ref)
        except ActorUnavailableError:  # still restarting: ask again
            slot.health_check = slot.handle.ready.remote()
        except RayActorError:
            slot.alive = False  # out of restarts: the rest of the pool carries on

    def _retry(self, spec: EpisodeSpec, report: CollectionReport) -> EpisodeSpec:
        attempt = spec.attempt + 1
        if attempt >= self.rollout.max_episode_attempts:
            raise RuntimeError(
                f"episode {spec.task.task_id!r} failed {attempt} times with its worker dying; "
                "giving up (rollout.max_episode_attempts)"
            )
        report.retried += 1
        return EpisodeSpec(spec.task, spec.iteration, attempt)
