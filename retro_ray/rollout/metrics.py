"""Rollout metrics: ``ray.util.metrics`` series for the Ray dashboard / Prometheus, and the
driver's one-line progress report.

Workers count what they see (episodes, trials by index, first success by trial index, LLM tokens
and latency); the driver sets what only it knows (queue depth, episodes in flight, rates over a
sliding window). Success by trial index in PromQL:
``sum(retro_ray_rollout_solved{trial<=k}) / sum(retro_ray_rollout_episodes)``.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Sequence
from typing import TextIO

from ray.util import metrics

from retro_ray.llm.base import Completion
from retro_ray.rollout.episodes import EpisodeSummary
from retro_ray.rollout.experience import ExperienceRow

LATENCY_BOUNDARIES_S = [0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]


class WorkerMetrics:
    """An ``EpisodeObserver`` that exports to Ray's metrics agent (create it inside Ray)."""

    def __init__(self, mode: str) -> None:
        self.tags = {"mode": mode}
        self.episodes = metrics.Counter(
            "retro_ray_rollout_episodes", "Finished episodes.", tag_keys=("mode",)
        )
        self.trials = metrics.Counter(
            "retro_ray_rollout_trials", "Trials played, by trial index.", tag_keys=("mode", "trial")
        )
        self.solved = metrics.Counter(
            "retro_ray_rollout_solved",
            "Episodes whose main chain was first won at this trial index.",
            tag_keys=("mode", "trial"),
        )
        self.tokens = metrics.Counter(
            "retro_ray_rollout_llm_tokens",
            "LLM tokens, by role (actor, reflector) and kind (prompt, completion).",
            tag_keys=("mode", "role", "kind"),
        )
        self.latency = metrics.Histogram(
            "retro_ray_rollout_llm_latency_s",
            "Latency of one LLM call (retries included), in seconds.",
            boundaries=LATENCY_BOUNDARIES_S,
            tag_keys=("mode", "role"),
        )
        self.episode_seconds = metrics.Histogram(
            "retro_ray_rollout_episode_s",
            "Wall time of one episode, in seconds.",
            boundaries=[0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300],
            tag_keys=("mode",),
        )

    def llm_call(self, role: str, completion: Completion) -> None:
        tags = {**self.tags, "role": role}
        for kind, count in (
            ("prompt", completion.prompt_tokens),
            ("completion", completion.completion_tokens),
        ):
            if count > 0:  # Ray counters reject a zero increment
                self.tokens.inc(count, tags={**tags, "kind": kind})
        self.latency.observe(completion.latency_s, tags=tags)

    def episode_done(self, summary: EpisodeSummary, rows: Sequence[ExperienceRow]) -> None:
        self.episodes.inc(1, tags=self.tags)
        self.episode_seconds.observe(summary.duration_s, tags=self.tags)
        for row in rows:
            self.trials.inc(1, tags={**self.tags, "trial": str(row.trial)})
        if summary.solved_at is not None:
            self.solved.inc(1, tags={**self.tags, "trial": str(summary.solved_at)})


class PoolMetrics:
    """Driver-side gauges and counters, plus the progress line on stderr."""

    def __init__(
        self,
        mode: str,
        total: int,
        label: str = "rollout",
        every_s: float = 5.0,
        window_s: float = 30.0,
        stream: TextIO | None = None,
        show: bool = True,
    ) -> None:
        self.tags = {"mode": mode}
        self.total, self.label, self.every_s, self.window_s = total, label, every_s, window_s
        self.stream = stream or sys.stderr
        self.show = show
        self.start = time.monotonic()
        self.done = self.solved = self.rows = 0
        self._recent: deque[tuple[float, EpisodeSummary]] = deque()
        self._last_line = 0.0
        self.queue_depth = metrics.Gauge(
            "retro_ray_rollout_queue_depth", "Episodes waiting for a worker.", tag_keys=("mode",)
        )
        self.in_flight = metrics.Gauge(
            "retro_ray_rollout_in_flight", "Episodes running on workers.", tag_keys=("mode",)
        )
        self.rates = {
            name: metrics.Gauge(f"retro_ray_rollout_{name}", f"{name}, sliding window.", ("mode",))
            for name in (
                "episodes_per_s",
                "trials_per_s",
                "actor_tokens_per_s",
                "reflection_tokens_per_s",
            )
        }
        self.restarts = metrics.Counter(
            "retro_ray_rollout_worker_crashes", "Worker crashes seen by the pool.", ("mode",)
        )
        self.outages = metrics.Counter(
            "retro_ray_rollout_outage_pauses", "Pauses after an endpoint outage.", ("mode",)
        )

    def resumed(self, n: int) -> None:
        """Episodes found finished in the log (counted as done, not in the rates)."""
        self.done += n

    def episode(self, summary: EpisodeSummary) -> None:
        now = time.monotonic()
        self.done += 1
        self.rows += summary.rows
        self.solved += summary.solved_at is not None
        self._recent.append((now, summary))
        while self._recent and self._recent[0][0] < now - self.window_s:
            self._recent.popleft()
        span = max(min(self.window_s, now - self.start), 1e-6)
        recent = [s for _, s in self._recent]
        values = {
            "episodes_per_s": len(recent) / span,
            "trials_per_s": sum(s.rows for s in recent) / span,
            "actor_tokens_per_s": sum(s.actor_tokens for s in recent) / span,
            "reflection_tokens_per_s": sum(s.reflection_tokens for s in recent) / span,
        }
        for name, value in values.items():
            self.rates[name].set(value, tags=self.tags)
        self.maybe_print(now)

    def state(self, queued: int, in_flight: int) -> None:
        self.queue_depth.set(queued, tags=self.tags)
        self.in_flight.set(in_flight, tags=self.tags)
        self._queued, self._running = queued, in_flight

    def maybe_print(self, now: float | None = None, force: bool = False) -> None:
        now = now or time.monotonic()
        if self.show and (force or now - self._last_line >= self.every_s):
            self._last_line = now
            self.stream.write(self.line(now) + "\n")
            self.stream.flush()

    def line(self, now: float | None = None) -> str:
        elapsed = (now or time.monotonic()) - self.start
        finished_here = len(self._recent)
        rate = finished_here / min(self.window_s, elapsed) if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else None
        success = self.solved / self.done if self.done else 0.0
        return (
            f"[{self.label}] episodes {self.done}/{self.total} | success {success:.2f} | "
            f"{rate:.2f} episodes/s | in flight {getattr(self, '_running', 0)} | "
            f"queued {getattr(self, '_queued', 0)} | ETA {'?' if eta is None else f'{eta:.0f}s'}"
        )
