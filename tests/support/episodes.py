"""Play actions through an environment: the episode helper the environment tests share."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from retro_ray.envs.base import Step, Task, Trajectory


def play(env: Any, task: Task, actions: Iterable[str], trial: int = 0) -> Trajectory:
    """Reset on ``task`` and step ``actions`` until the episode ends; the env's won, score and
    done end up on the trajectory. ``actions`` may be a generator: each action is drawn after
    the step before it (a policy that looks at the environment)."""
    trajectory = Trajectory(task=task, trial=trial, first_observation=env.reset(task))
    for action in actions:
        result = env.step(action)
        trajectory.steps.append(Step(action, result.observation, result.reward))
        if result.done:
            break
    trajectory.won, trajectory.score, trajectory.done = env.won, env.score, env.done
    return trajectory
