"""The training run's numbers for the report: reflection reward per iteration, throughput over
wall time, seconds per iteration, and the one-off cost of the run (episodes, wall time,
core-hours, tokens and dollars). Pure functions over the training log's rows and
``metrics.jsonl`` records, like ``data``: nothing here reads files or draws.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from retro_ray.evaluation.success import TOKEN_COLUMNS, Rows, mean, records
from retro_ray.report.data import Prices


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


def training_cost(
    data: Rows,
    metrics: Sequence[dict[str, Any]],
    summary: dict[str, Any] | None,
    prices: Prices,
    gate_episodes: int = 0,
) -> dict[str, Any] | None:
    """The one-off cost of the training run that made the adapter: what was played, for how
    long, on how many CPUs, and its tokens at ``prices``. None without any training record.

    ``episodes`` are the training log's (iteration, task) pairs, ``trials`` its rows (branches
    included); ``gate_episodes`` the validation episodes the promotion gate played. Wall time is
    ``summary.json``'s ``wall_time_s`` (the whole ``retro-ray train``: models, collection,
    learning, gate), or the sum of the iterations' ``seconds`` in ``metrics.jsonl`` when that is
    larger (a resumed run's summary covers its last process only) or the summary is missing.
    ``cpus`` is what the driver recorded in ``metrics.jsonl`` (the largest value, if the run was
    resumed on a bigger machine); ``core_hours = wall_time_s / 3600 * cpus`` (None when the run
    did not record its CPUs)."""
    rows = records(data, ("iteration", "task_id", *TOKEN_COLUMNS))
    if not rows and not metrics and not summary:
        return None
    sums = {c: sum(int(r.get(c) or 0) for r in rows) for c in TOKEN_COLUMNS}
    iterations = [m for m in metrics if "iteration" in m and "seconds" in m]
    iteration_s = sum(float(m["seconds"]) for m in iterations)
    summary_s = float((summary or {}).get("wall_time_s") or 0.0)
    if summary_s >= iteration_s and summary_s > 0:
        wall_s, wall_source = summary_s, "summary.json wall_time_s"
    elif iteration_s > 0:
        wall_s, wall_source = iteration_s, "sum of metrics.jsonl seconds"
    else:
        wall_s, wall_source = None, None
    recorded = [m["cpus"] for m in metrics if isinstance(m.get("cpus"), int | float)]
    cpus = max(recorded) if recorded else None
    actor_usd = prices.cost(sums["actor_prompt_tokens"], sums["actor_completion_tokens"])
    reflector_usd = prices.reflector_cost(
        sums["reflection_prompt_tokens"], sums["reflection_completion_tokens"]
    )
    return {
        "episodes": len({(int(r["iteration"]), r["task_id"]) for r in rows}),
        "trials": len(rows),
        "gate_episodes": gate_episodes,
        "iterations": len(iterations),
        "wall_time_s": wall_s,
        "wall_time_source": wall_source,
        "cpus": cpus,
        "core_hours": None if wall_s is None or cpus is None else wall_s / 3600.0 * cpus,
        "actor_tokens": sums["actor_prompt_tokens"] + sums["actor_completion_tokens"],
        "reflection_tokens": sums["reflection_prompt_tokens"]
        + sums["reflection_completion_tokens"],
        **{c: sums[c] for c in TOKEN_COLUMNS},
        "actor_cost_usd": actor_usd,
        "reflector_cost_usd": reflector_usd,
        "token_cost_usd": actor_usd + reflector_usd,
    }
