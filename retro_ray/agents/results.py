"""What the trial loop produces: per-trial records, per-task results, the summary users read
(cumulative success after each trial) and the progress line. Played trials are logged by
:mod:`retro_ray.rollout.experience` (the Parquet experience log), the one trial log."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO


@dataclass
class TrialRecord:
    task_id: str
    env: str
    split: str
    trial: int  # 0-based
    won: bool
    score: float  # G(k), the trial's shaped return
    steps: int
    invalid_actions: int
    trajectory: str  # rendered ``> action`` / observation text
    reflections_in: list[str]  # long-term memory the actor saw
    reflection: str | None = None  # written after this trial (failed, and not the last one)
    reflection_prompt: str | None = None
    actor_prompt_tokens: int = 0
    actor_completion_tokens: int = 0
    actor_cost: float = 0.0
    reflector_prompt_tokens: int = 0
    reflector_completion_tokens: int = 0
    duration_s: float = 0.0
    failure: str | None = None  # why the task stopped here on bad input (None: it did not)


@dataclass
class TaskResult:
    task_id: str
    env: str
    split: str
    trials: list[TrialRecord] = field(default_factory=list)

    @property
    def solved_at(self) -> int | None:
        """The first won trial (0-based), or None."""
        return next((t.trial for t in self.trials if t.won), None)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @staticmethod
    def from_json(line: str) -> TaskResult:
        data = json.loads(line)
        trials = [TrialRecord(**t) for t in data.pop("trials")]
        return TaskResult(trials=trials, **data)


def summarize(results: Sequence[TaskResult], max_trials: int) -> dict[str, Any]:
    """Cumulative success after each trial (a task counts as solved from its first won trial),
    mean best-so-far return after each trial, and token totals."""
    n = len(results)
    success, returns = [], []
    for k in range(max_trials):
        solved = [r.solved_at is not None and r.solved_at <= k for r in results]
        best = [max((t.score for t in r.trials if t.trial <= k), default=0.0) for r in results]
        success.append(sum(solved) / n if n else 0.0)
        returns.append(sum(best) / n if n else 0.0)
    trials = [t for r in results for t in r.trials]
    return {
        "tasks": n,
        "success_by_trial": success,
        "mean_return_by_trial": returns,
        "success_rate": success[-1] if success else 0.0,
        "trials_run": len(trials),
        "actor_prompt_tokens": sum(t.actor_prompt_tokens for t in trials),
        "actor_completion_tokens": sum(t.actor_completion_tokens for t in trials),
        "actor_cost": sum(t.actor_cost for t in trials),
        "reflector_completion_tokens": sum(t.reflector_completion_tokens for t in trials),
        "failed_tasks": sum(any(t.failure for t in r.trials) for r in results),
    }


class Progress:
    """A one-line progress report on stderr: tasks done, success so far, throughput, ETA."""

    def __init__(
        self, total: int, label: str = "", every_s: float = 2.0, stream: TextIO | None = None
    ):
        self.total = total
        self.label = label
        self.every_s = every_s
        self.stream = stream or sys.stderr
        self.done = 0
        self.solved = 0
        self.start = time.monotonic()
        self._last = 0.0

    def update(self, results: Iterable[TaskResult]) -> None:
        for r in results:
            self.done += 1
            self.solved += r.solved_at is not None
        now = time.monotonic()
        if now - self._last >= self.every_s or self.done >= self.total:
            self._last = now
            self.stream.write(self.line(now) + "\n")
            self.stream.flush()

    def line(self, now: float | None = None) -> str:
        elapsed = (now or time.monotonic()) - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        success = self.solved / self.done if self.done else 0.0
        eta_text = f"{eta:.0f}s" if eta != float("inf") else "?"
        return (
            f"[{self.label}] tasks {self.done}/{self.total} | success {success:.2f} | "
            f"{rate:.2f} tasks/s | ETA {eta_text}"
        )
