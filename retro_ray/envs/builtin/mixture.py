"""``mixture``: several task families as one environment, for one reflector across families.

The paper trains one retrospective model on the episodes of several environments. Here that is an
environment like any other, so collection, the learner, the gate and the evaluation need nothing
new: ``tasks(split, n, seed)`` deals the ``n`` tasks out to the families in turn (task ``j`` comes
from family ``j mod k``, so any prefix is balanced), each task keeps its own family's name in
``Task.env`` and its own id, and every call after ``reset(task)`` goes to that family's
environment. The evaluation table splits its figures by ``Task.env`` (``families`` in the table).

    env:
      name: mixture
      options:
        families: [lookup, household, shop]
        per_family: {household: {n_containers: 9}}   # a family's own env.options
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from retro_ray.envs.base import StepResult, Task, Trajectory
from retro_ray.envs.benchmark import ScriptedActorEnv
from retro_ray.envs.registry import EnvSpec, build_options, get_spec, make_env, register

NAME = "mixture"


@dataclass(frozen=True)
class MixtureOptions:
    families: tuple[str, ...] = ("lookup", "household", "shop")
    """Registered environments with tasks, an expert and oracles (``retro-ray env list``)."""
    per_family: dict[str, Any] = field(default_factory=dict)
    """A family's own ``env.options`` (difficulty knobs), by family name."""

    def validate(self) -> None:
        if not self.families:
            raise ValueError("families must name at least one environment")
        if len(set(self.families)) != len(self.families):
            raise ValueError(f"families lists an environment twice: {list(self.families)}")
        if NAME in self.families:
            raise ValueError("a mixture cannot contain itself")
        unknown = sorted(set(self.per_family) - set(self.families))
        if unknown:
            raise ValueError(
                f"per_family names {unknown}, which are not in families {list(self.families)}"
            )
        for family in self.families:
            options = self.per_family.get(family) or {}
            if not isinstance(options, dict):
                raise ValueError(f"per_family.{family} must be a mapping of options")
            build_options(get_spec(family), options, key=f"env.options.per_family.{family}")


class MixtureEnv(ScriptedActorEnv):
    name = NAME

    def __init__(self, options: MixtureOptions | None = None) -> None:
        options = options or MixtureOptions()
        self.options = options
        self.envs: dict[str, ScriptedActorEnv] = {}
        for family in options.families:
            env = make_env(family, options.per_family.get(family) or {})
            if not isinstance(env, ScriptedActorEnv):
                raise ValueError(
                    f"mixture family {family!r} has no tasks, expert and oracles "
                    "(it is not a built-in family); list built-in families only"
                )
            self.envs[family] = env
        self.current = self.envs[options.families[0]]

    def tasks(self, split: str, n: int, seed: int = 0) -> list[Task]:
        k = len(self.envs)
        per_family = [
            env.tasks(split, len(range(i, n, k)), seed) for i, env in enumerate(self.envs.values())
        ]
        return [per_family[j % k][j // k] for j in range(n)]

    def family(self, task: Task) -> ScriptedActorEnv:
        env = self.envs.get(task.env)
        if env is None:
            raise ValueError(
                f"task {task.task_id!r} belongs to {task.env!r}, not one of this mixture's "
                f"families ({', '.join(self.envs)})"
            )
        return env

    @property
    def max_steps(self) -> int:  # type: ignore[override]
        """The step limit of the current task's family (read it after ``reset``)."""
        return self.current.max_steps

    @max_steps.setter
    def max_steps(self, value: int) -> None:
        for env in self.envs.values():
            env.max_steps = value

    def reset(self, task: Task) -> str:
        self.current = self.family(task)
        return self.current.reset(task)

    def step(self, action: str) -> StepResult:
        return self.current.step(action)

    def expert_action(self) -> str:
        return self.current.expert_action()

    def random_action(self, rng: random.Random) -> str:
        return self.current.random_action(rng)

    def scripted_action(self, reflections: Sequence[str], rng: random.Random) -> str:
        return self.current.scripted_action(reflections, rng)

    def trajectory_oracle(self, trajectory: Trajectory, memory: Sequence[str]) -> str:
        return self.family(trajectory.task).trajectory_oracle(trajectory, memory)

    def ground_truth_reflection(self, task: Task) -> str:
        return self.family(task).ground_truth_reflection(task)

    def vague_reflection(self, trajectory: Trajectory, rng: random.Random) -> str:
        return self.family(trajectory.task).vague_reflection(trajectory, rng)

    def misleading_reflection(self, trajectory: Trajectory, rng: random.Random) -> str:
        return self.family(trajectory.task).misleading_reflection(trajectory, rng)

    def __getattr__(self, attr: str) -> Any:
        """What a family's environment offers beyond the protocol (its episode log, its task),
        from the current family."""
        if attr in ("current", "envs", "options"):  # not yet set: no recursion in __init__
            raise AttributeError(attr)
        return getattr(self.current, attr)


register(
    EnvSpec(
        name=NAME,
        factory=MixtureEnv,
        options_cls=MixtureOptions,
        description="several task families as one environment (one reflector across families)",
    )
)
