"""Before any model exists: through the real trial loop, a scripted actor that follows
reflections gains most from the trajectory oracle, less from vague advice, nothing from none."""

from __future__ import annotations

import asyncio

import pytest

from retro_ray.agents.build import build_trial_loop, config_for_agent
from retro_ray.agents.results import summarize
from retro_ray.config import load_config
from retro_ray.evaluation.play import task_list

AGENTS = ("react", "vague", "trajectory-oracle", "ground-truth-oracle")


def success_after_three_trials(env: str, agent: str, tasks: int = 100) -> float:
    cfg = load_config(
        None,
        [
            f"env.name={env}",
            f"env.num_tasks={tasks}",
            "actor.policy=scripted",
            "trials.max_trials=3",
        ],
    )
    cfg = config_for_agent(cfg, agent)
    loop = build_trial_loop(cfg)
    results = asyncio.run(loop.run_tasks(task_list(cfg), concurrency=64))
    return summarize(results, 3)["success_by_trial"][-1]


@pytest.mark.parametrize("env", ["lookup", "household", "shop"])
def test_trajectory_oracle_beats_vague_beats_none(env: str) -> None:
    s = {agent: success_after_three_trials(env, agent) for agent in AGENTS}
    print(env, s)
    assert s["trajectory-oracle"] >= s["vague"] + 0.1
    assert s["vague"] >= s["react"] + 0.1
    assert s["ground-truth-oracle"] >= s["trajectory-oracle"]
