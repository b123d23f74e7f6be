"""The report's numbers: pure functions over experience-log rows and ``metrics.jsonl`` records.

Every function takes a ``pyarrow.Table`` (as read from an ``ExperienceLog``) or a list of row
dicts, and returns plain Python values (lists, dicts, floats) ready for JSON. Nothing here reads
files or draws. Success is a fraction of tasks (0..1); a *point* is one percent of tasks (0.01).

Evaluation log conventions (``RUN_DIR/eval/experience``): ``mode`` is the agent, the
``iteration`` partition is the seed, every row is sample 0, one row per (task, trial) played, and
a task stops at its first won trial.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:  # pyarrow is imported where a table is read, not by ``retro-ray --help``
    import pyarrow as pa

AGENT_ORDER = ("react", "reflexion", "retroformer", "trajectory-oracle", "ground-truth-oracle")
"""Display order; agents not listed here follow, alphabetically."""
BASELINE = "react"
COMPARED = ("reflexion", "retroformer")
"""The agents whose cost per point of success is measured against ``BASELINE``."""

Rows: TypeAlias = "pa.Table | Sequence[dict[str, Any]]"


@dataclass(frozen=True)
class Prices:
    """Actor token prices in US dollars per million tokens."""

    prompt_per_mtok: float = 0.15
    completion_per_mtok: float = 0.60

    def __post_init__(self) -> None:
        if self.prompt_per_mtok < 0 or self.completion_per_mtok < 0:
            raise ValueError("token prices must be >= 0 (USD per million tokens)")

    def cost(self, prompt_tokens: float, completion_tokens: float) -> float:
        """Dollars for the given token counts."""
        return (
            prompt_tokens * self.prompt_per_mtok + completion_tokens * self.completion_per_mtok
        ) / 1e6


def records(data: Rows, columns: Iterable[str]) -> list[dict[str, Any]]:
    """The rows as dicts holding only ``columns`` (a table is projected before conversion)."""
    wanted = list(columns)
    if hasattr(data, "column_names"):  # a pyarrow.Table
        present = [c for c in wanted if c in data.column_names]
        return data.select(present).to_pylist()
    return [{c: r.get(c) for c in wanted} for r in data]


def agent_sort_key(agent: str) -> tuple[int, str]:
    return (AGENT_ORDER.index(agent) if agent in AGENT_ORDER else len(AGENT_ORDER), agent)


def mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else 0.0


def pstdev(values: Sequence[float]) -> float:
    """Population standard deviation (0 for fewer than two values), as ``driver.eval_table``."""
    return statistics.pstdev(values) if len(values) > 1 else 0.0


# --- evaluation -------------------------------------------------------------------------------

EVAL_COLUMNS = (
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
_TOKEN_COLUMNS = EVAL_COLUMNS[6:]


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
            ep.update({"trials": 0, **dict.fromkeys(_TOKEN_COLUMNS, 0)})
            episodes[key] = ep
        ep["trials"] += 1
        for column in _TOKEN_COLUMNS:
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

        out = {c.removesuffix("_tokens"): seed_mean(c) for c in _TOKEN_COLUMNS}
        out["actor"] = out["actor_prompt"] + out["actor_completion"]
        out["reflection"] = out["reflection_prompt"] + out["reflection_completion"]
        out["trials"] = seed_mean("trials")
        result[agent] = out
    return result


def cost_per_point(
    success: float,
    baseline_success: float,
    tokens: dict[str, float],
    baseline_tokens: dict[str, float],
    prices: Prices,
) -> dict[str, Any]:
    """What one point of success gained over the baseline costs in actor tokens and dollars.

    With S the cumulative success at the last trial (fraction of tasks, seed mean) and T the mean
    actor tokens per task (prompt + completion, all trials of the task)::

        gain_points       = 100 * (S_agent - S_base)           1 point = 1 % of tasks
        extra_tokens      = T_agent - T_base                   per task
        tokens_per_point  = extra_tokens / gain_points

    ``tokens_per_point`` is the extra actor tokens spent per task for each point of success;
    equivalently ``100 * tokens_per_point`` extra tokens buy one additional solved task. Dollars
    price the prompt and completion parts of ``extra_tokens`` separately (``prices``)::

        extra_cost_per_task          = extra_prompt * p_prompt + extra_completion * p_completion
        cost_per_point_per_1k_tasks  = 1000 * extra_cost_per_task / gain_points

    i.e. what raising success by one point costs on a workload of 1,000 tasks. A gain <= 0 has no
    cost per point: those fields are None and ``no_gain`` is True. With a gain, a negative value
    means the agent spends less than the baseline (fewer tokens, or a cheaper prompt/completion
    mix): its points come free.
    """
    gain = 100.0 * (success - baseline_success)
    extra_prompt = tokens["actor_prompt"] - baseline_tokens["actor_prompt"]
    extra_completion = tokens["actor_completion"] - baseline_tokens["actor_completion"]
    extra_tokens = extra_prompt + extra_completion
    extra_cost = prices.cost(extra_prompt, extra_completion)
    no_gain = gain <= 1e-9
    return {
        "success": success,
        "baseline_success": baseline_success,
        "gain_points": gain,
        "no_gain": no_gain,
        "actor_tokens_per_task": tokens["actor"],
        "baseline_actor_tokens_per_task": baseline_tokens["actor"],
        "extra_actor_tokens_per_task": extra_tokens,
        "extra_prompt_tokens_per_task": extra_prompt,
        "extra_completion_tokens_per_task": extra_completion,
        "reflection_tokens_per_task": tokens["reflection"],
        "extra_cost_per_task_usd": extra_cost,
        "tokens_per_point": None if no_gain else extra_tokens / gain,
        "cost_per_point_per_1k_tasks_usd": None if no_gain else 1000.0 * extra_cost / gain,
    }


def cost_comparison(
    success: dict[str, dict[str, Any]],
    tokens: dict[str, dict[str, float]],
    prices: Prices,
    baseline: str = BASELINE,
    agents: Sequence[str] = COMPARED,
) -> dict[str, dict[str, Any]]:
    """``cost_per_point`` of each of ``agents`` present in the log against ``baseline``, at the
    last trial; empty when the baseline was not evaluated."""
    if baseline not in success:
        return {}
    base_final = success[baseline]["mean"][-1]
    return {
        agent: cost_per_point(
            success[agent]["mean"][-1], base_final, tokens[agent], tokens[baseline], prices
        )
        for agent in agents
        if agent in success
    }


# --- training ---------------------------------------------------------------------------------


def reward_by_iteration(data: Rows) -> list[dict[str, Any]]:
    """Reflection reward per training iteration, over the rows played with a reflection (reward
    not null): ``n``, ``mean``, ``sem`` (standard error of the mean: sample standard deviation /
    sqrt(n); 0 when n = 1), and the shares of positive and negative rewards."""
    by_iteration: dict[int, list[float]] = defaultdict(list)
    for r in records(data, ("iteration", "reward")):
        if r["reward"] is not None and not math.isnan(r["reward"]):
            by_iteration[int(r["iteration"])].append(float(r["reward"]))
    out = []
    for it, rewards in sorted(by_iteration.items()):
        n = len(rewards)
        sem = statistics.stdev(rewards) / math.sqrt(n) if n > 1 else 0.0
        out.append(
            {
                "iteration": it,
                "n": n,
                "mean": mean(rewards),
                "sem": sem,
                "positive_share": sum(1 for x in rewards if x > 0) / n,
                "negative_share": sum(1 for x in rewards if x < 0) / n,
            }
        )
    return out


_NICE_BINS_S = (5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200)


def throughput(data: Rows, bin_s: float | None = None, max_bins: int = 40) -> dict[str, Any]:
    """Episodes and trials finished per minute over wall time.

    An episode is one (iteration, task_id); it finishes at the latest ``finished_at`` of its rows,
    a trial (a row) at its ``finished_at``. Time runs from the earliest ``started_at`` (or
    ``finished_at``). Finishes are counted in bins of ``bin_s`` seconds (default: the smallest of
    5 s, 10 s, ... 2 h giving at most ``max_bins`` bins) and scaled to per minute:
    ``rate = count / bin_s * 60``. Also the whole-run averages (count / span in minutes) and, per
    iteration, episodes, trials and the collection span (first start to last finish).
    """
    rows = [
        r
        for r in records(data, ("iteration", "task_id", "started_at", "finished_at"))
        if r["finished_at"] is not None
    ]
    if not rows:
        return {"bin_s": None, "minutes": [], "episodes_per_min": [], "trials_per_min": []}
    starts = [r["started_at"] or r["finished_at"] for r in rows]
    t0: datetime = min(starts)
    episode_end: dict[tuple[int, str], datetime] = {}
    for r in rows:
        key = (int(r["iteration"]), r["task_id"])
        episode_end[key] = max(episode_end.get(key, r["finished_at"]), r["finished_at"])
    trial_s = [(r["finished_at"] - t0).total_seconds() for r in rows]
    episode_s = [(end - t0).total_seconds() for end in episode_end.values()]
    span_s = max(max(trial_s), 1e-9)
    if bin_s is None:
        bin_s = next((b for b in _NICE_BINS_S if span_s / b <= max_bins), _NICE_BINS_S[-1])
    n_bins = max(1, math.ceil(span_s / bin_s))

    def rates(seconds: list[float]) -> list[float]:
        counts = [0] * n_bins
        for s in seconds:
            counts[min(int(s // bin_s), n_bins - 1)] += 1
        return [c / bin_s * 60.0 for c in counts]

    by_iteration: dict[int, list[tuple[dict[str, Any], datetime]]] = defaultdict(list)
    for r, start in zip(rows, starts, strict=True):
        by_iteration[int(r["iteration"])].append((r, start))
    per_iteration = [
        {
            "iteration": it,
            "episodes": len({r["task_id"] for r, _ in pairs}),
            "trials": len(pairs),
            "span_s": (
                max(r["finished_at"] for r, _ in pairs) - min(s for _, s in pairs)
            ).total_seconds(),
        }
        for it, pairs in sorted(by_iteration.items())
    ]
    return {
        "bin_s": bin_s,
        "start": t0.isoformat(),
        "span_s": span_s,
        "minutes": [k * bin_s / 60.0 for k in range(n_bins)],
        "episodes_per_min": rates(episode_s),
        "trials_per_min": rates(trial_s),
        "episodes": len(episode_end),
        "trials": len(rows),
        "mean_episodes_per_min": len(episode_end) / span_s * 60.0,
        "mean_trials_per_min": len(rows) / span_s * 60.0,
        "per_iteration": per_iteration,
    }


def iteration_seconds(metrics: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per training iteration (``metrics.jsonl``): total ``seconds``, ``collect_s`` and the rest
    (``other_s`` = seconds - collect_s: building the batch, the update, publishing, the swap)."""
    out = []
    for m in metrics:
        if "iteration" not in m or "seconds" not in m:
            continue
        collect = float(m.get("collect_s") or 0.0)
        seconds = float(m["seconds"])
        out.append(
            {
                "iteration": int(m["iteration"]),
                "seconds": seconds,
                "collect_s": collect,
                "other_s": max(seconds - collect, 0.0),
            }
        )
    return sorted(out, key=lambda r: r["iteration"])
