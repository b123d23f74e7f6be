"""Evaluating a discrete-action policy (the RLlib baseline's) the way ``retro-ray eval``
evaluates agents (no Ray).

The same test tasks (``env.split`` test, ``env.num_tasks``, drawn per evaluation seed) and up to
``trials.max_trials`` trials per task, stopping at the first won trial; one row per played trial
in the experience log's evaluation format (``mode`` = ``rl-ppo``, ``iteration`` = the seed,
``sample`` 0), so ``retro_ray.evaluation.table`` reads it like every other agent.

Actions are **sampled** from the policy (PPO's stochastic policy, the one it trained), each
trial with its own generator seeded from (evaluation seed, task, trial): the same checkpoint
evaluates to the same rows. Trials keep no state from one another (the policy is feedforward):
a failed trial is followed by a fresh one, which differs only by its sampled actions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from retro_ray.envs.base import Task
from retro_ray.rollout.experience import ExperienceRow, now_utc

RL_AGENT = "rl-ppo"
"""The condition label of the baseline in evaluation logs and tables."""

LogitsFn = Callable[[dict[str, torch.Tensor]], torch.Tensor]
"""Batched observation -> action logits (masked slots already at a very low logit)."""


class DiscreteTaskEnv(Protocol):
    """A gymnasium environment over one family's tasks with a discrete action space (such as
    ``retro_ray.rl.token_env.TokenActionEnv``): ``reset(options={"task_id": ...})`` starts that
    task; ``step`` returns gymnasium's 5-tuple with ``won``, ``score`` and ``masked`` in its info;
    ``log`` holds the trial's (action text, observation) pairs."""

    task: Task | None
    log: list[tuple[str, str]]

    def reset(
        self, *, seed: int | None = None, options: dict | None = None
    ) -> tuple[Any, dict]: ...

    def step(self, action: int) -> tuple[Any, float, bool, bool, dict]: ...


def trial_seed(seed: int, task_id: str, trial: int) -> int:
    digest = hashlib.sha256(f"rl|{seed}|{task_id}|{trial}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % (2**63)


def play_trial(
    env: DiscreteTaskEnv, logits_fn: LogitsFn, task_id: str, generator: torch.Generator
) -> dict[str, Any]:
    """One trial of ``task_id``; returns won, return, steps, masked picks and the trajectory."""
    obs, _ = env.reset(options={"task_id": task_id})
    done, info, masked = False, {}, 0
    while not done:
        batch = {k: torch.as_tensor(np.asarray(v))[None] for k, v in obs.items()}
        with torch.no_grad():
            logits = logits_fn(batch)[0]
        action = int(torch.multinomial(torch.softmax(logits.float(), -1), 1, generator=generator))
        obs, _, terminated, truncated, info = env.step(action)
        masked += int(info["masked"])
        done = terminated or truncated
    trajectory = "\n".join(f"> {a}\n{o}" for a, o in env.log)
    return {
        "won": bool(info.get("won", False)),
        "score": float(info.get("score", 0.0)),
        "steps": len(env.log),
        "masked": masked,
        "trajectory": trajectory,
    }


def evaluate_policy(
    envs: Mapping[int, DiscreteTaskEnv],
    logits_fn: LogitsFn,
    tasks: Mapping[int, Sequence[str]],
    trials: int,
    model_name: str,
) -> dict[int, dict[str, list[ExperienceRow]]]:
    """Rows per seed and task: every task played until won or ``trials`` trials. ``envs`` and
    ``tasks`` map each evaluation seed to its environment and its task ids: as in ``retro-ray
    eval``, seed ``s`` plays the split's tasks drawn with ``env.seed = s``."""
    out: dict[int, dict[str, list[ExperienceRow]]] = {}
    for seed, task_ids in tasks.items():
        env = envs[seed]
        per_task: dict[str, list[ExperienceRow]] = {}
        for task_id in task_ids:
            rows: list[ExperienceRow] = []
            for trial in range(trials):
                generator = torch.Generator().manual_seed(trial_seed(seed, task_id, trial))
                started = now_utc()
                played = play_trial(env, logits_fn, task_id, generator)
                task = env.task
                assert task is not None
                rows.append(
                    ExperienceRow(
                        task_id=task_id,
                        split=task.split,
                        env=task.env,
                        mode=RL_AGENT,
                        trial=trial,
                        sample=0,
                        won=played["won"],
                        return_after=played["score"],
                        actor_model=model_name,
                        steps=played["steps"],
                        invalid_actions=played["masked"],
                        trajectory=played["trajectory"],
                        started_at=started,
                        finished_at=now_utc(),
                    )
                )
                if played["won"]:
                    break
            per_task[task_id] = rows
        out[seed] = per_task
    return out
