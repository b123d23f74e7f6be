"""The evaluation table: cumulative success after each trial for every agent, several seeds.

Agents: ReAct (no reflection), Reflexion (the frozen retrospective base, ``retroformer@step0``),
Retroformer (the trained adapter), the trajectory oracle and the ground-truth oracle. Each seed
draws its own test-split tasks and reflection samples; ``spread`` is the standard deviation of the
last-trial success over seeds. ``gap_closed`` is the share of the Reflexion-to-trajectory-oracle
gap (last trial, seed means) that Retroformer closes.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from retro_ray.zoo.evaluate import TRAINED_ADAPTER, evaluate_reflections

AGENT_CONDITIONS = {
    "react": "no_reflection",
    "reflexion": "base_reflector",
    "retroformer": "trained_reflector",
    "trajectory-oracle": "trajectory_oracle",
    "ground-truth-oracle": "ground_truth_oracle",
}


async def agent_table(
    actor_dir: str | Path,
    retro_dir: str | Path,
    adapter_dir: str | Path,
    envs: tuple[str, ...],
    tasks: int,
    trials: int,
    seeds: tuple[int, ...],
) -> dict[str, Any]:
    from retro_ray.llm.torch_backend import TorchBackend

    actor = TorchBackend(actor_dir, max_batch_size=64, name="actor")
    retro = TorchBackend(retro_dir, max_batch_size=64, name="retrospective")
    await retro.load_adapter(TRAINED_ADAPTER, adapter_dir)
    conditions = tuple(AGENT_CONDITIONS.values())
    runs = [
        await evaluate_reflections(actor, retro, tasks, trials, envs, seed, conditions=conditions)
        for seed in seeds
    ]
    agents: dict[str, Any] = {}
    for agent, condition in AGENT_CONDITIONS.items():
        curves = [
            [
                statistics.mean(r["per_env"][e]["success_by_trial"][condition][k] for e in envs)
                for k in range(trials)
            ]
            for r in runs
        ]
        finals = [c[-1] for c in curves]
        agents[agent] = {
            "success_by_trial": [statistics.mean(c[k] for c in curves) for k in range(trials)],
            "spread": statistics.pstdev(finals) if len(finals) > 1 else 0.0,
            "per_seed": finals,
        }
    low = agents["reflexion"]["success_by_trial"][-1]
    high = agents["trajectory-oracle"]["success_by_trial"][-1]
    gain = agents["retroformer"]["success_by_trial"][-1] - low
    return {
        "agents": agents,
        "gap_closed": gain / (high - low) if high > low else None,
        "reflexion_reflector": "retroformer@step0 (the untrained retrospective base)",
        "envs": list(envs),
        "tasks_per_seed": tasks * len(envs),
        "seeds": list(seeds),
        "trials": trials,
    }


def format_agent_table(table: dict[str, Any]) -> str:
    trials = table["trials"]
    header = f"{'agent':<22}" + "".join(f"{'trial ' + str(k + 1):>10}" for k in range(trials))
    header += f"{'spread':>10}"
    lines = [header, "-" * len(header)]
    for agent, row in table["agents"].items():
        cells = "".join(f"{v:>10.3f}" for v in row["success_by_trial"])
        lines.append(f"{agent:<22}{cells}{row['spread']:>10.3f}")
    gap = table["gap_closed"]
    lines.append(
        f"gap closed (Reflexion -> trajectory oracle): {gap:.2f}" if gap is not None else ""
    )
    return "\n".join(lines)
