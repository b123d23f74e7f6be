"""Plumbing shared by the built-in environments: stable seeding, task ids, step bookkeeping.

Each built-in environment generates its instance from the task id alone, so any worker on any
machine rebuilds the same instance. A subclass of ``BuiltinEnv`` only says how an episode starts
(``_begin``) and what one action does (``_act``); the step counter, the step limit, the reward as
the change of the shaped score, and the answer to a malformed action live here, once.
"""

from __future__ import annotations

import hashlib
import random
import re
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from retro_ray.envs.base import StepResult, Task, check_split, split_of
from retro_ray.envs.benchmark import ScriptedActorEnv

# Few, short names: the embedded default trains tiny models with a small tokenizer on these texts.
FIRST_NAMES = (
    "Alice", "Bob", "Carl", "Dana", "Eve", "Finn", "Gina", "Hugo", "Ida", "Jack",
    "Kate", "Leo", "Mia", "Nick", "Olga", "Paul", "Rosa", "Sam", "Tina", "Uma",
    "Vic", "Will", "Zoe", "Anna", "Ben", "Cleo", "Dan", "Emma", "Fred", "Gus",
)  # fmt: skip
SURNAMES = (
    "Kay", "Moss", "Ng", "Lee", "Ho", "Day", "Fox", "Gray", "Hill", "King",
    "Lane", "Long", "Park", "Reed", "Rose", "Shaw", "Snow", "Stone", "Wolf", "Wood",
)  # fmt: skip
CITIES = (
    "Oslo", "Rome", "Paris", "Lima", "Cairo", "Tokyo", "Delhi", "Seoul", "Milan", "Dublin",
    "Berlin", "Madrid", "Vienna", "Prague", "Athens", "Lisbon", "Quito", "Hanoi", "Accra", "Riga",
)  # fmt: skip

STEP_LIMIT_NOTE = "Step limit reached."
EPISODE_OVER = "The episode is over."


def stable_rng(*parts: object) -> random.Random:
    """A generator seeded from text through SHA-256: the same on every process and machine
    (Python's ``hash()`` of a string is salted per process, so it must not be used here)."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def enumerate_tasks(env_name: str, split: str, n: int, seed: int) -> list[Task]:
    """The first ``n`` ids ``{env}-{seed}-{i}`` (i = 0, 1, ...) that hash into ``split``."""
    check_split(split)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    found: list[Task] = []
    i = 0
    while len(found) < n:
        task_id = f"{env_name}-{seed}-{i}"
        if split_of(task_id) == split:
            found.append(Task(env=env_name, task_id=task_id, split=split))
        i += 1
    return found


_BRACKET = re.compile(r"^\s*([A-Za-z]+)\s*\[\s*(.*?)\s*\]\s*\.?\s*$")


def bracket_action(action: str) -> tuple[str, str] | None:
    """``Verb[argument]`` as (lower-case verb, argument), or None when the text has another form."""
    match = _BRACKET.match(action)
    if match is None:
        return None
    return match.group(1).lower(), match.group(2)


def normalise(text: str) -> str:
    """Lower case, punctuation dropped, whitespace collapsed: for matching names and answers."""
    return " ".join(re.sub(r"[^a-z0-9 ]", " ", text.lower()).split())


def sentences(texts: Sequence[str]) -> list[str]:
    """Every sentence of every text: reflection advice is read one sentence at a time."""
    return [s.strip() for text in texts for s in re.split(r"(?<=[.!?])\s+|\n", text) if s.strip()]


@dataclass(frozen=True)
class Outcome:
    """What one well-formed action did."""

    observation: str
    score: float  # the shaped return after this action, in [0, 1]
    won: bool = False
    terminal: bool = False  # the episode's final action (Finish, put, buy) was taken


class BuiltinEnv(ScriptedActorEnv):
    """Step bookkeeping for a procedurally generated environment.

    Keeps the episode's log of (action, observation) pairs: the scripted actor reads only this
    log and the first observation, exactly what an LLM actor would see in its prompt.
    """

    name: ClassVar[str] = ""
    action_help: ClassVar[str] = ""
    """The allowed action forms, in one short line (also the answer to a malformed action)."""

    def __init__(self, max_steps: int) -> None:
        self.max_steps = max_steps
        self.task: Task | None = None
        self.first_observation = ""
        self.log: list[tuple[str, str]] = []
        self.steps_taken = 0
        self.done = False
        self.won = False
        self.score = 0.0

    def tasks(self, split: str, n: int, seed: int = 0) -> list[Task]:
        return enumerate_tasks(self.name, split, n, seed)

    def reset(self, task: Task) -> str:
        if task.env != self.name:
            raise ValueError(
                f"task {task.task_id!r} belongs to env {task.env!r}, not {self.name!r}"
            )
        self.task = task
        self.log = []
        self.steps_taken = 0
        self.done = self.won = False
        self.score = 0.0
        self.first_observation = self._begin(task)
        return self.first_observation

    def step(self, action: str) -> StepResult:
        if self.task is None:
            raise RuntimeError("call reset(task) before step(action)")
        if self.done:
            return StepResult(EPISODE_OVER, 0.0, True, self._info())
        self.steps_taken += 1
        outcome = self._act(action.strip())
        if outcome is None:
            outcome = Outcome(f"Invalid action. {self.action_help}", self.score)
        reward = outcome.score - self.score
        self.score, self.won = outcome.score, outcome.won
        self.done = outcome.won or outcome.terminal
        observation = outcome.observation
        if not self.done and self.steps_taken >= self.max_steps:
            self.done = True
            observation = f"{observation} {STEP_LIMIT_NOTE}"
        self.log.append((action, observation))
        return StepResult(observation, reward, self.done, self._info())

    def _info(self) -> dict[str, Any]:
        return {"won": self.won, "score": self.score, "steps": self.steps_taken}

    @property
    def observations(self) -> list[str]:
        return [observation for _, observation in self.log]

    @abstractmethod
    def _begin(self, task: Task) -> str:
        """Build the instance of ``task`` and return the first observation."""

    @abstractmethod
    def _act(self, action: str) -> Outcome | None:
        """Apply a stripped action; None when it is not one of the allowed forms."""
