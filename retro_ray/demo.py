"""``retro-ray demo``: the embedded default end to end.

Today the embedded default runs the built-in environments through the real trial loop with the
environments' scripted, reflection-following actor, and compares the reflectors that frame the
method: none (ReAct), vague, the trajectory oracle and the ground-truth oracle. The tiny
retrospective model and its training replace the scripted parts as they land.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from retro_ray.agents.build import config_for_agent
from retro_ray.config import load_config
from retro_ray.evaluate import evaluate, format_table

BUILTIN_ENVS = ("lookup", "household", "shop")
DEMO_AGENTS = ("react", "vague", "trajectory-oracle", "ground-truth-oracle")


def run_demo(tasks: int, output_dir: Path) -> int:
    start = time.monotonic()
    for env_name in BUILTIN_ENVS:
        rows = {}
        for agent in DEMO_AGENTS:
            cfg = load_config(
                None,
                [
                    f"env.name={env_name}",
                    f"env.num_tasks={tasks}",
                    "actor.policy=scripted",
                    "trials.max_trials=3",
                ],
            )
            cfg = config_for_agent(cfg, agent)
            out = output_dir / env_name / agent
            rows[agent] = asyncio.run(
                evaluate(cfg, out, label=f"{env_name} {agent}", show_progress=False)
            )
        print(f"\n{env_name}: cumulative success by trial ({tasks} test tasks, scripted actor)")
        print(format_table(rows))
    print(f"\ndemo finished in {time.monotonic() - start:.1f}s; results under {output_dir}/")
    return 0
