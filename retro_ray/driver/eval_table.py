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
figures are means per task, over every seed.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from typing import Any

TABLE_AGENTS = ("react", "reflexion", "retroformer", "trajectory-oracle", "ground-truth-oracle")
"""The agents of the paper's table, in its order (and the order rows are shown in)."""

Row = Mapping[str, Any]


def success_curves(rows: Iterable[Row], trials: int) -> dict[str, dict[int, list[float]]]:
    """agent -> seed -> cumulative success after each of ``trials`` trials (main chain only)."""
    first_win: dict[tuple[str, int], dict[str, int | None]] = {}
    for row in rows:
        if row.get("sample", 0) != 0:
            continue
        tasks = first_win.setdefault((row["mode"], int(row["iteration"])), {})
        won_at = tasks.get(row["task_id"])
        if row["won"] and (won_at is None or row["trial"] < won_at):
            tasks[row["task_id"]] = int(row["trial"])
        else:
            tasks.setdefault(row["task_id"], None)
    curves: dict[str, dict[int, list[float]]] = {}
    for (agent, seed), tasks in sorted(first_win.items()):
        n = len(tasks)
        curves.setdefault(agent, {})[seed] = [
            sum(1 for at in tasks.values() if at is not None and at <= k) / n for k in range(trials)
        ]
    return curves


def usage_per_task(rows: Iterable[Row]) -> dict[str, dict[str, float]]:
    """agent -> mean actor tokens (prompt, completion), reflection tokens and cost per task."""
    sums: dict[str, dict[str, float]] = {}
    tasks: dict[str, set[tuple[int, str]]] = {}
    for row in rows:
        agent = row["mode"]
        tasks.setdefault(agent, set()).add((int(row["iteration"]), row["task_id"]))
        total = sums.setdefault(agent, dict.fromkeys(_USAGE, 0.0))
        for key, columns in _USAGE.items():
            total[key] += sum(float(row.get(c) or 0) for c in columns)
    return {a: {k: v / len(tasks[a]) for k, v in s.items()} for a, s in sums.items()}


_USAGE = {
    "actor_prompt_tokens": ("actor_prompt_tokens",),
    "actor_completion_tokens": ("actor_completion_tokens",),
    "reflection_tokens": ("reflection_prompt_tokens", "reflection_completion_tokens"),
    "cost": ("cost",),
}


def agent_table(rows: Iterable[Row], trials: int) -> dict[str, Any]:
    """The table of the module docstring from an evaluation log's rows."""
    rows = list(rows)
    curves = success_curves(rows, trials)
    usage = usage_per_task(rows)
    order = [a for a in TABLE_AGENTS if a in curves] + sorted(set(curves) - set(TABLE_AGENTS))
    agents: dict[str, Any] = {}
    for agent in order:
        per_seed = curves[agent]
        finals = [c[-1] for c in per_seed.values()]
        agents[agent] = {
            "success_by_trial": [
                statistics.fmean(c[k] for c in per_seed.values()) for k in range(trials)
            ],
            "spread": statistics.pstdev(finals),
            "per_seed": {str(seed): curve[-1] for seed, curve in per_seed.items()},
            "tasks": sum(_tasks_of(rows, agent)),
            **{f"{k}_per_task": v for k, v in usage[agent].items()},
        }
    seeds = sorted({s for per_seed in curves.values() for s in per_seed})
    return {"agents": agents, "gap_closed": gap_closed(agents), "seeds": seeds, "trials": trials}


def _tasks_of(rows: list[Row], agent: str) -> list[int]:
    seen: dict[int, set[str]] = {}
    for row in rows:
        if row["mode"] == agent:
            seen.setdefault(int(row["iteration"]), set()).add(row["task_id"])
    return [len(v) for v in seen.values()]


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
