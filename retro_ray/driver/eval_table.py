"""The evaluation table, computed from the rows of an evaluation's experience log (pure Python).

An evaluation log holds one row per played trial with columns ``mode`` (the agent),
``iteration`` (the evaluation seed), ``task_id``, ``trial``, ``sample`` (0 for evaluation) and
``won``. A task stops at its first won trial, so it counts as solved from that trial on:

    success_after(k) = |{tasks with a won trial <= k}| / |{tasks}|       (per agent and seed)

``success_by_trial`` is the mean of that curve over seeds, ``spread`` the standard deviation of
the last-trial success over seeds (population, 0 for one seed), and ``gap_closed`` the share of
the Reflexion-to-trajectory-oracle gap at the last trial that Retroformer closes:

    gap_closed = (S_retroformer - S_reflexion) / (S_trajectory_oracle - S_reflexion)

(``None`` when one of the three is missing or the oracle is not above Reflexion). Token and cost
figures are means per task (the mean over seeds of each seed's mean); the arithmetic lives in
:mod:`retro_ray.report.data`, which the report shares.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from retro_ray.report.data import (
    AGENT_ORDER,
    EVAL_COLUMNS,
    eval_episodes,
    success_by_trial,
    tokens_per_task,
)

__all__ = ["EVAL_COLUMNS", "TABLE_AGENTS", "agent_table", "format_agent_table", "gap_closed"]

TABLE_AGENTS = AGENT_ORDER
"""The agents of the paper's table, in its order (and the order rows are shown in)."""


def agent_table(rows: Iterable[Mapping[str, Any]], trials: int) -> dict[str, Any]:
    """The table of the module docstring from an evaluation log's rows."""
    episodes = eval_episodes(list(rows))
    success = success_by_trial(episodes, trials)
    tokens = tokens_per_task(episodes)
    agents = {
        agent: {
            "success_by_trial": curve["mean"],
            "spread": curve["spread"],
            "per_seed": {seed: c[-1] for seed, c in curve["per_seed"].items()},
            "tasks": sum(curve["tasks_per_seed"].values()),
            "actor_prompt_tokens_per_task": tokens[agent]["actor_prompt"],
            "actor_completion_tokens_per_task": tokens[agent]["actor_completion"],
            "reflection_tokens_per_task": tokens[agent]["reflection"],
        }
        for agent, curve in success.items()
    }
    seeds = sorted({s for curve in success.values() for s in curve["seeds"]})
    return {"agents": agents, "gap_closed": gap_closed(agents), "seeds": seeds, "trials": trials}


def gap_closed(agents: Mapping[str, Mapping[str, Any]]) -> float | None:
    needed = ("reflexion", "retroformer", "trajectory-oracle")
    if not all(a in agents for a in needed):
        return None
    low, trained, high = (agents[a]["success_by_trial"][-1] for a in needed)
    return (trained - low) / (high - low) if high > low else None


def format_agent_table(table: Mapping[str, Any]) -> str:
    trials = table["trials"]
    header = f"{'agent':<22}" + "".join(f"{'trial ' + str(k + 1):>10}" for k in range(trials))
    header += f"{'spread':>10}{'tasks':>8}"
    lines = [header, "-" * len(header)]
    for agent, row in table["agents"].items():
        cells = "".join(f"{v:>10.3f}" for v in row["success_by_trial"])
        lines.append(f"{agent:<22}{cells}{row['spread']:>10.3f}{row['tasks']:>8}")
    gap = table.get("gap_closed")
    if gap is not None:
        lines.append(f"gap closed (Reflexion -> trajectory oracle, last trial): {gap:.2f}")
    return "\n".join(lines)
