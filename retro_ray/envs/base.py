"""The text environment protocol and the records every part of the pipeline shares.

An environment is a plain Python object with two methods, ``reset(task) -> observation`` and
``step(action) -> StepResult``: text in, text out. Everything else (gymnasium and Ray registration,
expert policies, oracle reflectors) is built around that narrow contract, so a user's own business
task plugs in by implementing just these two methods (see ``retro_ray.envs.registry``).

Tasks are identified by a stable string id and assigned to the train / validation / test split by a
hash of that id, so a split never depends on how many tasks were asked for or in which order.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

SPLITS = ("train", "validation", "test")

# Share of task ids (by hash) in each split: 80% train, 10% validation, 10% test.
_SPLIT_BOUNDS = {"train": (0, 80), "validation": (80, 90), "test": (90, 100)}


def split_of(task_id: str) -> str:
    """The split a task id belongs to: a pure function of the id, stable across runs and machines."""
    bucket = int.from_bytes(hashlib.sha256(task_id.encode()).digest()[:4], "big") % 100
    for split, (low, high) in _SPLIT_BOUNDS.items():
        if low <= bucket < high:
            return split
    raise AssertionError("split bounds cover 0..99")


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return split


@dataclass(frozen=True)
class Task:
    """One environment instance: a question, a game, a shopping instruction."""

    env: str  # registered environment name
    task_id: str  # stable id, unique within the environment
    split: str  # "train" | "validation" | "test"
    payload: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    """Whatever the environment needs to rebuild the instance (a seed, a data record)."""


@dataclass(frozen=True)
class StepResult:
    observation: str
    reward: float
    done: bool
    info: dict[str, Any]
    """Always holds ``won`` (bool, the task is solved) and ``score`` (float, the shaped return so far)."""


@runtime_checkable
class TextEnv(Protocol):
    """The contract every environment implements: text observations, text actions."""

    def reset(self, task: Task) -> str:
        """Start an episode on ``task``; return the first observation (the task description)."""
        ...

    def step(self, action: str) -> StepResult:
        """Apply one action. An unknown or malformed action is not an error: it returns an
        observation explaining what is allowed, reward 0, and counts as a step."""
        ...


@dataclass(frozen=True)
class Step:
    action: str
    observation: str
    reward: float


@dataclass
class Trajectory:
    """One trial: the actor's actions and the environment's answers, with the trial's return."""

    task: Task
    trial: int  # 0-based trial index
    first_observation: str
    steps: list[Step] = field(default_factory=list)
    won: bool = False
    score: float = 0.0  # the shaped return G(k): 0/1, F1, shop score, a user's KPI
    done: bool = False

    @property
    def episode_return(self) -> float:
        return self.score

    def render(self, max_chars: int | None = None) -> str:
        """The trajectory as the ``> action`` / observation text that prompts show; when longer than
        ``max_chars`` the oldest steps are dropped (the task line is always kept)."""
        lines = [f"> {s.action}\n{s.observation}" for s in self.steps]
        text = "\n".join(lines)
        if max_chars is not None:
            while len(text) > max_chars and lines:
                lines.pop(0)
                text = "...\n" + "\n".join(lines)
        return text
