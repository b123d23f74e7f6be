"""gymnasium adapter: any text environment as a ``gymnasium.Env`` with text spaces.

``reset(seed=..., options={"task_id": ...})`` picks a task (by id, or by the seed among the
split's first ``task_pool`` tasks); ``step`` returns gymnasium's five-tuple. Registered with
gymnasium (``gymnasium.make("retro_ray/lookup-v0")``) and, at the Ray edge, with Ray's env
registry (``retro_ray.envs.ray_registration``).
"""

from __future__ import annotations

import string
from typing import Any

import gymnasium
from gymnasium import spaces

from retro_ray.envs.base import Task
from retro_ray.envs.registry import env_names, make_env

MAX_TEXT = 8192


class TextSpace(spaces.Text):
    """Any string up to ``max_length`` characters: observations hold any Unicode (HotPotQA has
    accents), which ``spaces.Text``'s fixed charset would reject. Samples draw from ASCII."""

    def __init__(self, max_length: int = MAX_TEXT) -> None:
        super().__init__(max_length=max_length, charset=frozenset(string.printable))

    def contains(self, x: object) -> bool:
        return isinstance(x, str) and self.min_length <= len(x) <= self.max_length


class GymTextEnv(gymnasium.Env):
    """``env_config`` keys: ``name`` (required), ``options``, ``data_path``, ``split``
    (default ``train``), ``seed`` (task stream), ``task_pool`` (default 1000)."""

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012 (gymnasium's own convention)

    def __init__(self, env_config: dict[str, Any] | None = None, **kwargs: Any) -> None:
        config = {**(env_config or {}), **kwargs}
        if "name" not in config:
            raise ValueError("GymTextEnv needs env_config['name'], e.g. {'name': 'lookup'}")
        self.name: str = config["name"]
        self.env = make_env(self.name, config.get("options"), config.get("data_path"))
        self.split: str = config.get("split", "train")
        self.task_seed: int = int(config.get("seed", 0))
        self.task_pool: int = int(config.get("task_pool", 1000))
        self._tasks: list[Task] | None = None
        self.observation_space = TextSpace()
        self.action_space = TextSpace()
        self.task: Task | None = None

    def _pick_task(self, options: dict[str, Any] | None) -> Task:
        if self._tasks is None:
            self._tasks = self.env.tasks(self.split, self.task_pool, self.task_seed)  # type: ignore[attr-defined]
        if options and "task_id" in options:
            by_id = {t.task_id: t for t in self._tasks}
            if options["task_id"] not in by_id:
                raise ValueError(f"task {options['task_id']!r} is not among the {self.split} tasks")
            return by_id[options["task_id"]]
        return self.np_random_choice()

    def np_random_choice(self) -> Task:
        assert self._tasks is not None
        index = int(self.np_random.integers(len(self._tasks)))
        return self._tasks[index]

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        self.task = self._pick_task(options)
        return self.env.reset(self.task), {"task_id": self.task.task_id}

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        result = self.env.step(action)
        truncated = bool(result.info.get("truncated", False))
        return (
            result.observation,
            result.reward,
            result.done and not truncated,
            truncated,
            result.info,
        )


def register_gymnasium_envs() -> list[str]:
    """Register every built-in as ``retro_ray/<name>-v0`` with gymnasium."""
    ids = []
    for name in env_names():
        env_id = f"retro_ray/{name}-v0"
        if env_id not in gymnasium.registry:
            gymnasium.register(id=env_id, entry_point=GymTextEnv, kwargs={"name": name})
        ids.append(env_id)
    return ids
