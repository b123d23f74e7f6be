"""A user's own environment, plugged in by import path (``tests.support.guess_env:GuessEnv``):
guess a hidden number. It implements only the text protocol plus ``tasks``, like a business task
would, and its reward is its own KPI."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from retro_ray.envs.base import StepResult, Task, split_of


@dataclass(frozen=True)
class GuessOptions:
    high: int = 5
    """Numbers go from 1 to ``high``."""

    def validate(self) -> None:
        if self.high < 2:
            raise ValueError(f"high must be >= 2, got {self.high}")


class GuessEnv:
    Options = GuessOptions
    max_steps = 1

    def __init__(self, options: GuessOptions) -> None:
        self.options = options
        self.secret = 0

    def tasks(self, split: str, n: int, seed: int = 0) -> list[Task]:
        out, i = [], 0
        while len(out) < n:
            task_id = f"guess-{seed}-{i}"
            if split_of(task_id) == split:
                out.append(Task(env="guess", task_id=task_id, split=split))
            i += 1
        return out

    def reset(self, task: Task) -> str:
        digest = hashlib.sha256(task.task_id.encode()).digest()
        self.secret = 1 + digest[0] % self.options.high
        return f"Guess a number from 1 to {self.options.high}. Say: guess N"

    def step(self, action: str) -> StepResult:
        words = action.split()
        if len(words) != 2 or words[0] != "guess" or not words[1].isdigit():
            return StepResult("Say: guess N", 0.0, True, {"won": False, "score": 0.0})
        won = int(words[1]) == self.secret
        return StepResult(
            "Right!" if won else "Wrong.", float(won), True, {"won": won, "score": float(won)}
        )
