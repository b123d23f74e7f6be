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
from datetime import UTC, datetime
from typing import Any

# The evaluation log's readers live with the evaluation (``retro_ray.evaluation.success``), below
# the report; the report's modules use them through this module.
from retro_ray.evaluation.success import EVAL_COLUMNS as EVAL_COLUMNS
from retro_ray.evaluation.success import (
    TOKEN_COLUMNS,
    Rows,
    agent_sort_key,
    base_agent,
    mean,
    records,
)
from retro_ray.evaluation.success import eval_episodes as eval_episodes
from retro_ray.evaluation.success import max_trials as max_trials
from retro_ray.evaluation.success import success_by_trial as success_by_trial
from retro_ray.evaluation.success import tokens_per_task as tokens_per_task

BASELINE = "react"
COMPARED = ("reflexion", "retroformer")
"""The agents whose cost per point of success is measured against ``BASELINE``."""
BASE_REFLECTOR, TRAINED_REFLECTOR = COMPARED
"""The agents whose reflections the report shows side by side: the frozen base reflector
(Reflexion) and the trained adapter (Retroformer)."""


def decoding(label: str) -> str:
    """What a label adds to its agent (``reflexion-greedy`` -> ``greedy``; ``react`` -> "")."""
    return label[len(base_agent(label)) :].strip("-_ ")


@dataclass(frozen=True)
class Prices:
    """Token prices in US dollars per million tokens: the actor's, and the reflector's (None:
    the actor's price; a self-hosted reflector still costs what its tokens cost to serve)."""

    prompt_per_mtok: float = 0.15
    completion_per_mtok: float = 0.60
    reflector_prompt_per_mtok: float | None = None
    reflector_completion_per_mtok: float | None = None

    def __post_init__(self) -> None:
        named = {
            "--price-prompt": self.prompt_per_mtok,
            "--price-completion": self.completion_per_mtok,
            "--price-reflector-prompt": self.reflector_prompt_per_mtok,
            "--price-reflector-completion": self.reflector_completion_per_mtok,
        }
        for flag, value in named.items():
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(
                    f"{flag}: bad price {value}; give a finite number >= 0 (USD per million tokens)"
                )

    @property
    def reflector_prompt(self) -> float:
        rp = self.reflector_prompt_per_mtok
        return self.prompt_per_mtok if rp is None else rp

    @property
    def reflector_completion(self) -> float:
        rc = self.reflector_completion_per_mtok
        return self.completion_per_mtok if rc is None else rc

    def cost(self, prompt_tokens: float, completion_tokens: float) -> float:
        """Dollars for the given actor token counts."""
        return (
            prompt_tokens * self.prompt_per_mtok + completion_tokens * self.completion_per_mtok
        ) / 1e6

    def reflector_cost(self, prompt_tokens: float, completion_tokens: float) -> float:
        """Dollars for the given reflector token counts."""
        return (
            prompt_tokens * self.reflector_prompt + completion_tokens * self.reflector_completion
        ) / 1e6

    def as_dict(self) -> dict[str, Any]:
        """The prices as used (defaults resolved), and which reflector prices were defaulted."""
        return {
            "prompt_per_mtok": self.prompt_per_mtok,
            "completion_per_mtok": self.completion_per_mtok,
            "reflector_prompt_per_mtok": self.reflector_prompt,
            "reflector_completion_per_mtok": self.reflector_completion,
            "reflector_prices_default_to_actor": self.reflector_prompt_per_mtok is None
            and self.reflector_completion_per_mtok is None,
        }


# --- evaluation -------------------------------------------------------------------------------

_TOKEN_COLUMNS = TOKEN_COLUMNS


def cost_per_point(
    success: float,
    baseline_success: float,
    tokens: dict[str, float],
    baseline_tokens: dict[str, float],
    prices: Prices,
) -> dict[str, Any]:
    """What one point of success gained over the baseline costs in tokens and dollars, counting
    both models a buyer pays for: the actor and the reflector.

    With S the cumulative success at the last trial (fraction of tasks, seed mean) and T the mean
    tokens per task (actor prompt + completion + reflector prompt + completion, all trials of the
    task)::

        gain_points       = 100 * (S_agent - S_base)           1 point = 1 % of tasks
        extra_tokens      = T_agent - T_base                   per task
        tokens_per_point  = extra_tokens / gain_points

    ``tokens_per_point`` is the extra tokens spent per task for each point of success;
    equivalently ``100 * tokens_per_point`` extra tokens buy one additional solved task
    (``actor_tokens_per_point`` counts the actor's share alone). Dollars price the four parts of
    ``extra_tokens`` separately (``prices``)::

        extra_cost_per_task          = extra_actor_prompt * p_prompt
                                       + extra_actor_completion * p_completion
                                       + extra_reflector_prompt * p_reflector_prompt
                                       + extra_reflector_completion * p_reflector_completion
        cost_per_point_per_1k_tasks  = 1000 * extra_cost_per_task / gain_points

    i.e. what raising success by one point costs on a workload of 1,000 tasks. A gain <= 0 has no
    cost per point: those fields are None and ``no_gain`` is True. With a gain, a negative value
    means the agent spends less than the baseline (fewer tokens, or a cheaper prompt/completion
    mix): its points come free. The one-off cost of training a reflector is ``training_cost``.
    """
    gain = 100.0 * (success - baseline_success)
    extra = {c: tokens[c] - baseline_tokens[c] for c in _PER_TASK_TOKEN_PARTS}
    extra_actor = extra["actor_prompt"] + extra["actor_completion"]
    extra_reflector = extra["reflection_prompt"] + extra["reflection_completion"]
    extra_tokens = extra_actor + extra_reflector
    actor_cost = prices.cost(extra["actor_prompt"], extra["actor_completion"])
    reflector_cost = prices.reflector_cost(
        extra["reflection_prompt"], extra["reflection_completion"]
    )
    extra_cost = actor_cost + reflector_cost
    no_gain = gain <= 1e-9
    return {
        "success": success,
        "baseline_success": baseline_success,
        "gain_points": gain,
        "no_gain": no_gain,
        "actor_tokens_per_task": tokens["actor"],
        "baseline_actor_tokens_per_task": baseline_tokens["actor"],
        "reflection_tokens_per_task": tokens["reflection"],
        "baseline_reflection_tokens_per_task": baseline_tokens["reflection"],
        "tokens_per_task": tokens["actor"] + tokens["reflection"],
        "extra_actor_tokens_per_task": extra_actor,
        "extra_prompt_tokens_per_task": extra["actor_prompt"],
        "extra_completion_tokens_per_task": extra["actor_completion"],
        "extra_reflection_tokens_per_task": extra_reflector,
        "extra_reflection_prompt_tokens_per_task": extra["reflection_prompt"],
        "extra_reflection_completion_tokens_per_task": extra["reflection_completion"],
        "extra_tokens_per_task": extra_tokens,
        "extra_actor_cost_per_task_usd": actor_cost,
        "extra_reflector_cost_per_task_usd": reflector_cost,
        "extra_cost_per_task_usd": extra_cost,
        "tokens_per_point": None if no_gain else extra_tokens / gain,
        "actor_tokens_per_point": None if no_gain else extra_actor / gain,
        "cost_per_point_per_1k_tasks_usd": None if no_gain else 1000.0 * extra_cost / gain,
    }


_PER_TASK_TOKEN_PARTS = (
    "actor_prompt",
    "actor_completion",
    "reflection_prompt",
    "reflection_completion",
)


def baseline_label(labels: Iterable[str], baseline: str = BASELINE) -> str | None:
    """The label of ``baseline`` among ``labels``: the plain name if present, else the first
    label of that agent in display order; None when the baseline was not evaluated."""
    present = sorted((a for a in labels if base_agent(a) == baseline), key=agent_sort_key)
    if baseline in present:
        return baseline
    return present[0] if present else None


def best_labels(success: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Per base agent, its label with the highest success at the last trial (an agent evaluated
    with greedy and sampled reflections is judged by its better decoding); ties go to the first
    label in display order."""
    best: dict[str, str] = {}
    for agent in sorted(success, key=agent_sort_key):
        base = base_agent(agent)
        if base not in best or success[agent]["mean"][-1] > success[best[base]]["mean"][-1]:
            best[base] = agent
    return best


def cost_comparison(
    success: dict[str, dict[str, Any]],
    tokens: dict[str, dict[str, float]],
    prices: Prices,
    baseline: str = BASELINE,
    agents: Sequence[str] = COMPARED,
) -> dict[str, dict[str, Any]]:
    """``cost_per_point`` of every label of ``agents`` present in the log (each decoding of each
    agent) against the baseline's label, at the last trial; empty when the baseline was not
    evaluated."""
    base = baseline_label(success, baseline)
    if base is None:
        return {}
    base_final = success[base]["mean"][-1]
    return {
        agent: cost_per_point(
            success[agent]["mean"][-1], base_final, tokens[agent], tokens[base], prices
        )
        for agent in sorted(success, key=agent_sort_key)
        if base_agent(agent) in agents
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
    rows = records(data, ("iteration", "task_id", *_TOKEN_COLUMNS))
    if not rows and not metrics and not summary:
        return None
    sums = {c: sum(int(r.get(c) or 0) for r in rows) for c in _TOKEN_COLUMNS}
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
        **{c: sums[c] for c in _TOKEN_COLUMNS},
        "actor_cost_usd": actor_usd,
        "reflector_cost_usd": reflector_usd,
        "token_cost_usd": actor_usd + reflector_usd,
    }


# --- what was learned: reflections side by side -----------------------------------------------

EXAMPLE_COLUMNS = (
    "mode",
    "iteration",
    "task_id",
    "trial",
    "sample",
    "won",
    "return_after",
    "reflection",
    "trajectory",
    "adapter_version",
)


def trajectory_excerpt(trajectory: str | None, max_chars: int = 400) -> str:
    """A trial in a few lines: its actions (``> ...`` lines) and its last line (the outcome).
    Longer than ``max_chars``, it keeps the first and the last lines around a ``…`` line."""
    lines = [line.rstrip() for line in (trajectory or "").splitlines() if line.strip()]
    if not lines:
        return ""
    kept = [line for line in lines[:-1] if line.startswith(">")] + [lines[-1]]
    text = "\n".join(kept)
    if len(text) <= max_chars:
        return text
    head: list[str] = []
    tail: list[str] = []
    budget = max_chars - 2  # the "…" line and its newline
    for i in range(len(kept)):  # alternate: first line, last line, second, second to last ...
        line = kept[i // 2] if i % 2 == 0 else kept[-1 - i // 2]
        if len(line) + 1 > budget:
            break
        budget -= len(line) + 1
        (head if i % 2 == 0 else tail).append(line)
    if not head:  # one line longer than everything: cut it
        return kept[0][: max_chars - 1] + "…"
    return "\n".join([*head, "…", *reversed(tail)])


def reflection_examples(
    data: Rows,
    base_label: str,
    trained_label: str,
    limit: int = 5,
    excerpt_chars: int = 400,
) -> dict[str, Any]:
    """Held-out tasks on which both reflectors had something to fix: the base reflector's
    (``base_label``) and the trained adapter's (``trained_label``) reflection after the same
    failed first trial, each with what the actor then did in trial 2.

    A (seed, task) qualifies when both agents played trials 0 and 1 of its main chain and lost
    trial 0. The chosen examples (at most ``limit``) are the tasks where the two next trials
    differ in outcome first, then the others; each group by task id, then seed: the same log
    always gives the same examples. Reflections and trajectories are model and environment
    output, returned as they are (the page escapes them)."""
    chains: dict[tuple[str, int, str], dict[int, dict[str, Any]]] = defaultdict(dict)
    wanted = (base_label, trained_label)
    for r in records(data, EXAMPLE_COLUMNS):
        if r["mode"] in wanted and not (r.get("sample") or 0) and int(r["trial"]) <= 1:
            chains[(r["mode"], int(r["iteration"]), r["task_id"])][int(r["trial"])] = r
    eligible = []
    for seed, task in sorted({(seed, task) for _, seed, task in chains}):
        pair = [chains.get((label, seed, task), {}) for label in wanted]
        if not all(0 in c and 1 in c and not c[0]["won"] for c in pair):
            continue
        base, trained = (
            _example_side(label, c, excerpt_chars) for label, c in zip(wanted, pair, strict=True)
        )
        differs = base["won"] != trained["won"]
        eligible.append(
            {"seed": seed, "task_id": task, "differs": differs, "base": base, "trained": trained}
        )
    eligible.sort(key=lambda e: (not e["differs"], e["task_id"], e["seed"]))
    return {
        "base_agent": base_label,
        "trained_agent": trained_label,
        "eligible": len(eligible),
        "differing": sum(1 for e in eligible if e["differs"]),
        "examples": eligible[:limit],
    }


def _example_side(label: str, chain: dict[int, dict[str, Any]], chars: int) -> dict[str, Any]:
    failed, nxt = chain[0], chain[1]
    return {
        "agent": label,
        "adapter_version": nxt.get("adapter_version"),
        "failed_return": float(failed["return_after"]),
        "failed_excerpt": trajectory_excerpt(failed.get("trajectory"), chars),
        "reflection": nxt.get("reflection") or "",
        "won": bool(nxt["won"]),
        "return": float(nxt["return_after"]),
        "excerpt": trajectory_excerpt(nxt.get("trajectory"), chars),
    }


# --- gate decisions and the registry's history -----------------------------------------------

_WHO_FIELDS = ("by", "who", "user", "approved_by", "approver")
_GATE_FIELDS = ("candidate", "current", "candidate_return", "current_return", "margin")


def _when(value: Any) -> str | None:
    """An event time as ISO 8601 (UTC): epoch seconds as the registry writes them, or text."""
    if isinstance(value, int | float) and math.isfinite(value):
        return datetime.fromtimestamp(value, UTC).isoformat(timespec="seconds")
    return str(value) if value is not None else None


def history_entry(event: dict[str, Any]) -> dict[str, Any]:
    """One registry event in the report's shape: ``time`` (ISO), ``event``, ``alias``,
    ``version``, ``previous``, ``by`` (who, for approvals), ``reason``, and every other field
    under ``other``."""
    who = next((event[f] for f in _WHO_FIELDS if event.get(f) is not None), None)
    known = {"time", "event", "alias", "version", "previous", "reason", "run", *_WHO_FIELDS}
    return {
        "time": _when(event.get("time")),
        "event": str(event.get("event", "?")),
        "alias": event.get("alias"),
        "version": event.get("version"),
        "previous": event.get("previous"),
        "by": who,
        "reason": event.get("reason") or "",
        # ``run`` is this run's (others are filtered out); empty fields say nothing
        "other": {k: v for k, v in sorted(event.items()) if k not in known and v not in (None, "")},
    }


def registry_timeline(
    history: Sequence[dict[str, Any]],
    events: Sequence[dict[str, Any]],
    run: str | None = None,
) -> dict[str, Any]:
    """The registry's history as the report shows it: ``history`` (every promotion, rollback,
    pending promotion and approval: ``retro_ray.registry.registry_history``) in order of time,
    and the versions published, from the raw ``events``. Entries that name another ``run`` (a
    registry shared by several runs) are left out and counted in ``other_runs``."""
    mine = events_of_run(history, run)
    published = {
        int(e["version"])
        for e in events_of_run(events, run)
        if e.get("event") == "publish" and _is_int(e.get("version"))
    }
    return {
        "events": sorted((history_entry(e) for e in mine), key=lambda e: e["time"] or ""),
        "published_versions": sorted(published),
        "other_runs": len(history) - len(mine),
    }


def events_of_run(events: Sequence[dict[str, Any]], run: str | None) -> list[dict[str, Any]]:
    """The events that belong to ``run``: those naming no run, or this one (None: all)."""
    return [e for e in events if run is None or e.get("run") in (None, run)]


def _is_int(value: Any) -> bool:
    try:
        int(value)
    except (TypeError, ValueError):
        return False
    return True


GATE_LOG = "gates.jsonl"
"""The driver's log of its gate outcomes, one JSON a line in the run directory."""


def gate_decisions(
    metrics: Sequence[dict[str, Any]],
    events: Sequence[dict[str, Any]],
    run: str | None = None,
    gate_log: Sequence[dict[str, Any]] = (),
) -> list[dict[str, Any]]:
    """Every promotion-gate decision of the run, each once, from wherever it was recorded: the
    driver's ``gates.jsonl`` (``gate_log``: decisions and gates that raised), the registry's
    ``gate`` events, and gate records in ``metrics.jsonl`` (a ``gate`` object, or ``gate_*``
    fields). A decision already found (same candidate, current and returns) is not repeated.
    Each has ``time`` (ISO), ``iteration``, ``candidate``, ``current`` and their returns,
    ``margin``, ``promote``, ``outcome`` (the gate's word, else ``promote``/``reject``),
    ``reason`` (or the error), ``source`` and ``other`` (the rest); in order of time."""
    found: list[dict[str, Any]] = []
    seen: set[tuple[Any, ...]] = set()

    def add(raw: dict[str, Any], source: str, iteration: Any = None) -> None:
        entry = gate_entry(raw, source, raw.get("iteration", iteration))
        key = _gate_key(entry)
        if key is None or key not in seen:
            seen.add(key)
            found.append(entry)

    for raw in gate_log:
        add(raw, GATE_LOG)
    for raw in events_of_run(events, run):
        if raw.get("event") == "gate":
            add(raw, "events.jsonl")
    for m in metrics:
        gate = _gate_in_record(m)
        if gate is not None:
            add(gate, "metrics.jsonl", m.get("iteration"))
    return sorted(
        found,
        key=lambda g: (g["time"] or "", int(g["iteration"]) if _is_int(g["iteration"]) else -1),
    )


def gate_entry(raw: dict[str, Any], source: str, iteration: Any = None) -> dict[str, Any]:
    """One gate decision in the report's shape (see ``gate_decisions``)."""
    promote = raw.get("promote")
    outcome = raw.get("outcome") or {True: "promote", False: "reject"}.get(promote)
    known = {"time", "event", "iteration", "promote", "outcome", "reason", "error", "run"}
    return {
        "time": _when(raw.get("time")),
        "iteration": iteration,
        **{f: raw.get(f) for f in _GATE_FIELDS},
        "promote": promote,
        "outcome": outcome,
        "reason": raw.get("reason") or raw.get("error") or "",
        "source": source,
        "other": {
            k: v
            for k, v in sorted(raw.items())
            if k not in known and k not in _GATE_FIELDS and v not in (None, "")
        },
    }


def _gate_in_record(record: dict[str, Any]) -> dict[str, Any] | None:
    """A gate decision held in a ``metrics.jsonl`` record, if any (a timing such as ``gate_s``
    alone is not a decision: one needs ``promote`` or ``candidate``)."""
    if isinstance(record.get("gate"), dict):
        gate = dict(record["gate"])
    else:
        gate = {k.removeprefix("gate_"): v for k, v in record.items() if k.startswith("gate_")}
    return gate if ("promote" in gate or "candidate" in gate) else None


def _gate_key(entry: dict[str, Any]) -> tuple[Any, ...] | None:
    """What makes two records one decision; None (never the same) for a gate that decided
    nothing (an error has no candidate)."""
    if entry.get("candidate") is None:
        return None

    def rounded(x: Any) -> Any:
        return round(float(x), 6) if isinstance(x, int | float) else x

    return (
        entry.get("candidate"),
        entry.get("current"),
        rounded(entry.get("candidate_return")),
        rounded(entry.get("current_return")),
    )
