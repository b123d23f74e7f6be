"""Play a fixed list of actions through an environment: the episode helper the benchmark
environment tests share."""

from __future__ import annotations

from typing import Any

from retro_ray.envs.base import Step, Task, Trajectory


def play(env: Any, task: Task, actions: list[str]) -> Trajectory:
    """Reset on ``task`` and step ``actions`` until the episode ends; the env's won, score and
    done end up on the trajectory."""
    trajectory = Trajectory(task=task, trial=0, first_observation=env.reset(task))
    for action in actions:
        result = env.step(action)
        trajectory.steps.append(Step(action, result.observation, result.reward))
        if result.done:
            break
    trajectory.won, trajectory.score, trajectory.done = env.won, env.score, env.done
    return trajectory
