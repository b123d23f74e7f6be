"""The evaluation log's rows as episodes, cumulative success by trial and tokens per task (pure).

Every function takes a ``pyarrow.Table`` (as read from an ``ExperienceLog``) or a list of row
dicts and returns plain Python values. Nothing here reads files. Success is a fraction of tasks
(0..1).

Evaluation log conventions (``RUN_DIR/eval/experience``): ``mode`` is the condition label, the
``iteration`` partition is the seed, every row is sample 0, one row per (task, trial) played, and
a task stops at its first won trial.

The evaluation table (:mod:`.table`) and ``retro-ray report`` (``retro_ray.report.data``, which
re-exports these) read the log through these functions: they live here, below the report, so that
the evaluation does not import the report that reads it.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:  # pyarrow is imported where a table is read, not by ``retro-ray --help``
    import pyarrow as pa

AGENT_ORDER = (
    "react",
    "reflexion",
    "retroformer",
    "rl-ppo",
    "trajectory-oracle",
    "ground-truth-oracle",
)
"""Display order; agents not listed here follow, alphabetically."""
Rows: TypeAlias = "pa.Table | Sequence[dict[str, Any]]"
"""Experience-log rows: a ``pyarrow.Table`` or row dicts."""


def base_agent(label: str) -> str:
    """The agent an evaluation label belongs to: the longest name of ``AGENT_ORDER`` the label
    starts with (``reflexion-greedy`` -> ``reflexion``), else the label itself. Evaluation
    conditions are (agent, decoding) pairs, so one agent may appear under several labels."""
    matches = [a for a in AGENT_ORDER if label.startswith(a)]
    return max(matches, key=len) if matches else label


def records(data: Rows, columns: Iterable[str]) -> list[dict[str, Any]]:
    """The rows as dicts holding only ``columns`` (a table is projected before conversion)."""
    wanted = list(columns)
    if hasattr(data, "column_names"):  # a pyarrow.Table
        present = [c for c in wanted if c in data.column_names]
        return data.select(present).to_pylist()
    return [{c: r.get(c) for c in wanted} for r in data]


def agent_sort_key(agent: str) -> tuple[int, str, str]:
    """``AGENT_ORDER`` by base agent (an agent's decodings stay together), then the label."""
    base = base_agent(agent)
    order = AGENT_ORDER.index(base) if base in AGENT_ORDER else len(AGENT_ORDER)
    return (order, base, agent)


def mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else 0.0


def pstdev(values: Sequence[float]) -> float:
    """Population standard deviation (0 for fewer than two values), as ``driver.eval_table``."""
    return statistics.pstdev(values) if len(values) > 1 else 0.0


EVAL_COLUMNS = (
    "env",
    "mode",
    "iteration",
    "task_id",
    "trial",
    "sample",
    "won",
    "actor_prompt_tokens",
    "actor_completion_tokens",
    "reflection_prompt_tokens",
    "reflection_completion_tokens",
)
TOKEN_COLUMNS = (
    "actor_prompt_tokens",
    "actor_completion_tokens",
    "reflection_prompt_tokens",
    "reflection_completion_tokens",
)


def eval_episodes(data: Rows) -> list[dict[str, Any]]:
    """One record per (agent, seed, task): ``solved_at`` (first won trial, 0-based, or None),
    ``trials`` played, and the task's token sums over all its trials (the four ``*_tokens``
    columns of the log). Only the main chain counts (sample 0, all of an evaluation log), as in
    ``retro_ray.driver.eval_table``."""
    episodes: dict[tuple[str, int, str], dict[str, Any]] = {}
    for r in records(data, EVAL_COLUMNS):
        if r.get("sample") or 0:
            continue
        key = (r["mode"], int(r["iteration"]), r["task_id"])
        ep = episodes.get(key)
        if ep is None:
            ep = {"agent": key[0], "seed": key[1], "task_id": key[2], "solved_at": None}
            ep.update({"trials": 0, **dict.fromkeys(TOKEN_COLUMNS, 0)})
            episodes[key] = ep
        ep["trials"] += 1
        for column in TOKEN_COLUMNS:
            ep[column] += int(r.get(column) or 0)
        if r["won"] and (ep["solved_at"] is None or r["trial"] < ep["solved_at"]):
            ep["solved_at"] = int(r["trial"])
    return sorted(
        episodes.values(), key=lambda e: (agent_sort_key(e["agent"]), e["seed"], e["task_id"])
    )


def _by_agent_seed(episodes: Sequence[dict[str, Any]]) -> dict[str, dict[int, list[dict]]]:
    grouped: dict[str, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for ep in episodes:
        grouped[ep["agent"]][ep["seed"]].append(ep)
    return {a: dict(sorted(grouped[a].items())) for a in sorted(grouped, key=agent_sort_key)}


def max_trials(episodes: Sequence[dict[str, Any]]) -> int:
    """Trials of the longest task in the log (the x range shared by all agents)."""
    return max((ep["trials"] for ep in episodes), default=0)


def success_by_trial(
    episodes: Sequence[dict[str, Any]], n_trials: int | None = None
) -> dict[str, dict[str, Any]]:
    """Cumulative success after each trial, per agent: per seed, the mean and the spread.

    For a seed with tasks T, success after trial k (1-based) is
    ``|{t in T : t was first won at trial <= k}| / |T|``. A task that stopped early (it won)
    stays solved for every later trial; one that stopped early without winning stays unsolved;
    so every agent's curve extends to ``n_trials`` (default: the longest task of the whole log).
    ``mean[k]`` and ``std[k]`` are the mean and the population standard deviation over seeds;
    ``spread`` is ``std`` at the last trial.
    """
    n = n_trials if n_trials is not None else max_trials(episodes)
    result: dict[str, dict[str, Any]] = {}
    for agent, seeds in _by_agent_seed(episodes).items():
        per_seed = {
            seed: [
                sum(1 for ep in eps if ep["solved_at"] is not None and ep["solved_at"] < k + 1)
                / len(eps)
                for k in range(n)
            ]
            for seed, eps in seeds.items()
        }
        curves = list(per_seed.values())
        std = [pstdev([c[k] for c in curves]) for k in range(n)]
        result[agent] = {
            "seeds": list(per_seed),
            "tasks_per_seed": {str(s): len(eps) for s, eps in seeds.items()},
            "per_seed": {str(s): c for s, c in per_seed.items()},
            "mean": [mean([c[k] for c in curves]) for k in range(n)],
            "std": std,
            "spread": std[-1] if std else 0.0,
        }
    return result


def tokens_per_task(episodes: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean tokens per task, per agent: the mean over seeds of each seed's mean over its tasks
    (tasks summed over all their trials). ``actor`` = prompt + completion of the acting model;
    ``reflection`` = prompt + completion of the reflecting model (0 for ReAct)."""
    result: dict[str, dict[str, float]] = {}
    for agent, seeds in _by_agent_seed(episodes).items():

        def seed_mean(column: str, seeds: dict[int, list[dict]] = seeds) -> float:
            return mean([mean([ep[column] for ep in eps]) for eps in seeds.values()])

        out = {c.removesuffix("_tokens"): seed_mean(c) for c in TOKEN_COLUMNS}
        out["actor"] = out["actor_prompt"] + out["actor_completion"]
        out["reflection"] = out["reflection_prompt"] + out["reflection_completion"]
        out["trials"] = seed_mean("trials")
        result[agent] = out
    return result
