"""The evaluation table and its uncertainty, from evaluation-log rows (pure: no files, no Ray).

Rows carry ``mode`` = the condition label (``react``, ``reflexion-greedy``...), ``iteration`` = the
evaluation seed, and one row per played trial; a task stops at its first won trial, so it counts
as solved from that trial on::

    success_after(k) = |{tasks with a won trial <= k}| / |{tasks}|       (per condition and seed)

Per condition: ``success_by_trial`` (mean over seeds), ``spread`` (sample standard deviation of
the last-trial success over seeds, 0 for one seed) and ``ci95`` (percentile bootstrap of the
last-trial success over the (seed, task) episodes).

Each agent is compared at its best: ``best`` names, per agent, the decoding with the higher
last-trial success (ties go to greedy), and the headline figures use those. ``gap_closed`` is the
share of the Reflexion-to-trajectory-oracle gap that Retroformer closes at the last trial::

    gap_closed = (S_retroformer - S_reflexion) / (S_trajectory_oracle - S_reflexion)

:func:`paired_effect` gives the paired difference Retroformer - Reflexion and ``gap_closed`` with
95% intervals from a bootstrap that resamples training runs and, inside them, tasks (the same
tasks for every condition, so the pairing holds). One training run is the special case used by
``retro-ray eval``; ``benchmarks.learning_effect`` passes several.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from retro_ray.evaluation.conditions import split_label
from retro_ray.evaluation.success import (
    agent_sort_key,
    eval_episodes,
    success_by_trial,
    tokens_per_task,
)

BOOTSTRAP_SAMPLES = 2000
Unit = tuple[int, str]
"""One evaluated task: (evaluation seed, task id)."""


def solved_by_last_trial(
    rows: Iterable[Mapping[str, Any]], trials: int
) -> dict[str, dict[Unit, float]]:
    """Per condition label and (seed, task): 1.0 if solved within ``trials`` trials, else 0.0."""
    out: dict[str, dict[Unit, float]] = {}
    for ep in eval_episodes(list(rows)):
        solved = ep["solved_at"] is not None and ep["solved_at"] < trials
        out.setdefault(ep["agent"], {})[(ep["seed"], ep["task_id"])] = float(solved)
    return out


def best_decodings(last: Mapping[str, float]) -> dict[str, str]:
    """Per agent, the label of its better decoding by last-trial success (ties: greedy, the
    cheaper and deterministic one). Agents without decodings map to themselves."""
    best: dict[str, str] = {}
    for label in sorted(last, key=lambda lab: (split_label(lab)[1] != "greedy", lab)):
        agent = split_label(label)[0]
        if agent not in best or last[label] > last[best[agent]]:
            best[agent] = label
    return best


def agent_table(
    rows: Iterable[Mapping[str, Any]], trials: int, bootstrap_seed: int = 0
) -> dict[str, Any]:
    """The table of the module docstring from an evaluation log's rows (``mode`` = label)."""
    rows = list(rows)
    episodes = eval_episodes(rows)
    success = success_by_trial(episodes, trials)
    tokens = tokens_per_task(episodes)
    solved = solved_by_last_trial(rows, trials)
    conditions = {}
    for label, curve in success.items():
        last = list(curve["per_seed"].values())
        agent, decoding = split_label(label)
        conditions[label] = {
            "agent": agent,
            "decoding": decoding,
            "success_by_trial": curve["mean"],
            "spread": statistics.stdev([c[-1] for c in last]) if len(last) > 1 else 0.0,
            "ci95": mean_ci95(solved[label], bootstrap_seed),
            "per_seed": {seed: c[-1] for seed, c in curve["per_seed"].items()},
            "tasks": sum(curve["tasks_per_seed"].values()),
            "actor_prompt_tokens_per_task": tokens[label]["actor_prompt"],
            "actor_completion_tokens_per_task": tokens[label]["actor_completion"],
            "reflection_tokens_per_task": tokens[label]["reflection"],
        }
    best = best_decodings({lab: row["success_by_trial"][-1] for lab, row in conditions.items()})
    seeds = sorted({s for curve in success.values() for s in curve["seeds"]})
    table: dict[str, Any] = {"agents": conditions, "best": best, "seeds": seeds, "trials": trials}
    effect = paired_effect({0: solved}, best, bootstrap_seed)
    table.update(effect or {"gap_closed": None})
    return table


def split_by_family(rows: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """The rows of each task family (their ``env``: a mixture's tasks keep their own family's
    name), by family name."""
    out: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        out.setdefault(row["env"], []).append(row)
    return dict(sorted(out.items()))


def mean_ci95(values: Mapping[Unit, float], seed: int = 0) -> list[float]:
    """Percentile bootstrap interval of a mean over tasks (resampled within each seed)."""
    if not values:
        return [0.0, 0.0]
    rng = np.random.default_rng(seed)
    by_seed: dict[int, list[float]] = {}
    for (s, _), v in sorted(values.items()):
        by_seed.setdefault(s, []).append(v)
    groups = [np.asarray(v) for v in by_seed.values()]
    n = sum(len(g) for g in groups)
    means = (
        sum(g[rng.integers(0, len(g), (BOOTSTRAP_SAMPLES, len(g)))].sum(axis=1) for g in groups) / n
    )
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def paired_effect(
    runs: Mapping[Any, Mapping[str, Mapping[Unit, float]]],
    best: Mapping[str, str],
    seed: int = 0,
) -> dict[str, Any] | None:
    """Retroformer minus Reflexion (each at its best decoding) and ``gap_closed`` over training
    runs, with 95% percentile intervals from a two-level bootstrap: resample the runs, then the
    tasks (one draw of tasks shared by every condition and run, so differences stay paired).

    ``runs[r][label][(seed, task)]`` is 1.0 when the task was solved by the last trial. Returns
    None when a run lacks Reflexion, Retroformer or the trajectory oracle."""
    needed = [best.get(a) for a in ("reflexion", "retroformer", "trajectory-oracle")]
    if None in needed or not runs:
        return None
    low, trained, high = needed
    run_ids = sorted(runs)
    if any(label not in runs[r] for r in run_ids for label in needed):
        return None
    units = sorted(set.intersection(*(set(runs[r][lab]) for r in run_ids for lab in needed)))
    if not units:
        return None
    # (condition, run, unit) matrix
    m = np.array([[[runs[r][lab][u] for u in units] for r in run_ids] for lab in needed])
    diff, gap = _effect(m)
    rng = np.random.default_rng(seed)
    diffs, gaps = [], []
    for _ in range(BOOTSTRAP_SAMPLES):
        rs = rng.integers(0, len(run_ids), len(run_ids))
        us = rng.integers(0, len(units), len(units))
        d, g = _effect(m[:, rs][:, :, us])
        diffs.append(d)
        if g is not None:
            gaps.append(g)
    return {
        "diff": diff,
        "diff_ci95": _percentiles(diffs),
        "gap_closed": gap,
        "gap_closed_ci95": _percentiles(gaps) if gaps else None,
        "compared": {"reflexion": low, "retroformer": trained, "trajectory-oracle": high},
        "training_runs": len(run_ids),
        "tasks": len(units),
    }


def _effect(m: np.ndarray) -> tuple[float, float | None]:
    low, trained, high = (float(m[i].mean()) for i in range(3))
    return trained - low, ((trained - low) / (high - low) if high > low else None)


def _percentiles(values: Sequence[float]) -> list[float]:
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


DISPLAY_NAMES = {"rl-ppo": "RL (RLlib PPO)"}
"""Labels shown under another name in the table (the RL baseline's row)."""


def with_baseline(
    table: Mapping[str, Any],
    baseline: Mapping[str, Any],
    training_episodes: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """``table`` with the conditions of another agent's table (``baseline``, e.g. the RL
    baseline's ``eval/table.json``) added as rows, and ``training_episodes`` (label or agent ->
    environment episodes it consumed in training) merged with the baseline's. The two tables
    must count the same trials and seeds, else the rows would not be comparable (ValueError)."""
    for key in ("trials", "seeds"):
        if table.get(key) != baseline.get(key):
            raise ValueError(
                f"the baseline's table has {key} {baseline.get(key)} but this one has "
                f"{table.get(key)}; evaluate both with the same {key}"
            )
    out = dict(table)
    merged = {**table["agents"], **baseline["agents"]}
    out["agents"] = {label: merged[label] for label in sorted(merged, key=agent_sort_key)}
    out["best"] = {**table.get("best", {}), **baseline.get("best", {})}
    episodes = {**table.get("training_episodes", {}), **baseline.get("training_episodes", {})}
    out["training_episodes"] = {**episodes, **(training_episodes or {})}
    return out


def format_agent_table(table: Mapping[str, Any]) -> str:
    """The table as text: one line per condition, the best decoding of each agent marked *;
    with ``training_episodes`` in the table, a column of the environment episodes each agent
    consumed in training (by label, else by agent; blank when unknown). A mixture's table is
    followed by one table per family."""
    text = _format_one(table)
    for name, part in (table.get("families") or {}).items():
        text += f"\n\n{name}:\n" + _format_one(part)
    return text


def _format_one(table: Mapping[str, Any]) -> str:
    trials = table["trials"]
    episodes = table.get("training_episodes") or {}
    header = f"{'agent':<26}" + "".join(f"{'trial ' + str(k + 1):>9}" for k in range(trials))
    header += f"{'95% CI':>16}{'tasks':>7}" + (f"{'train episodes':>16}" if episodes else "")
    lines = [header, "-" * len(header)]
    best = set(table.get("best", {}).values())
    for label, row in table["agents"].items():
        mark = "*" if row.get("decoding") and label in best else " "
        cells = "".join(f"{v:>9.3f}" for v in row["success_by_trial"])
        lo, hi = row["ci95"]
        name = DISPLAY_NAMES.get(label, label) + mark
        line = f"{name:<26}{cells}{f'[{lo:.3f}, {hi:.3f}]':>16}{row['tasks']:>7}"
        if episodes:
            used = episodes.get(label, episodes.get(row.get("agent", label)))
            line += f"{'' if used is None else used:>16}"
        lines.append(line)
    if table.get("gap_closed") is not None:
        lo, hi = table["diff_ci95"]
        lines.append(
            f"* each agent's better decoding. Retroformer - Reflexion at trial {trials}: "
            f"{table['diff']:+.3f} [{lo:+.3f}, {hi:+.3f}]"
        )
        g_ci = table.get("gap_closed_ci95") or [float("nan")] * 2
        lines.append(
            f"gap closed (Reflexion -> trajectory oracle): {table['gap_closed']:.2f} "
            f"[{g_ci[0]:.2f}, {g_ci[1]:.2f}]"
        )
    return "\n".join(lines)
