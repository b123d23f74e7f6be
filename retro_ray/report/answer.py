"""The report's answer in plain sentences: per point of success gained over ReAct, the extra
tokens and dollars of each agent, then the one-off cost of the training run; or, without an
evaluation, the command that makes one. ``build`` puts it in ``report.json`` and the page shows
it (``html``).
"""

from __future__ import annotations

from typing import Any

from retro_ray.report.data import COMPARED, base_agent
from retro_ray.report.text import label, tokens, usd

EVAL_HINT = "retro-ray eval --run RUN_DIR"


def eval_hint(run_dir: str) -> str:
    return EVAL_HINT.replace("RUN_DIR", run_dir)


def cost_sentence(
    evaluation: dict[str, Any] | None,
    run_dir: str = "RUN_DIR",
    training: dict[str, Any] | None = None,
) -> str:
    """The manager's answer in plain text: per point of success over ReAct, the extra actor and
    reflector tokens and dollars of each agent (at its better decoding), then the one-off
    training cost (``training``: ``training_stats.training_cost``). ``run_dir`` goes into the command to
    run when the evaluation is missing."""
    return f"{_per_point_answer(evaluation, run_dir)} {training_clause(training)}"


def _per_point_answer(evaluation: dict[str, Any] | None, run_dir: str) -> str:
    if evaluation is None:
        return (
            "No evaluation was run, so there is no success or cost comparison yet: "
            f"run `{eval_hint(run_dir)}` and then this report again."
        )
    baseline, trials = label(evaluation["baseline"]), evaluation["trials"]
    if not evaluation["cost"]:
        present = {base_agent(a) for a in evaluation["agents"]}
        wanted = (base_agent(evaluation["baseline"]), *COMPARED)
        missing = [label(a) for a in wanted if a not in present]
        return (
            f"The evaluation log has no {' and no '.join(missing)}, so there is no cost per "
            f"point against {baseline}: run `{eval_hint(run_dir)}` for the missing agents."
        )
    best = evaluation.get("best") or {}
    shown = [a for a in evaluation["cost"] if best.get(base_agent(a), a) == a]
    clauses = [_clause(label(agent), baseline, evaluation["cost"][agent]) for agent in shown]
    return (
        f"At trial {trials}, against {baseline}, counting actor and reflector tokens: "
        + "; ".join(clauses)
        + "."
    )


def _clause(name: str, baseline: str, c: dict[str, Any]) -> str:
    if c["no_gain"]:
        return (
            f"{name} shows no gain over {baseline} ({c['gain_points']:+.1f} points), "
            "so there is no cost per point"
        )
    gain = f"{name} gains {c['gain_points']:.1f} points"
    extra = c["extra_tokens_per_task"]
    parts = (
        f"{c['extra_actor_tokens_per_task']:+,.0f} actor, "
        f"{c['extra_reflection_tokens_per_task']:+,.0f} reflector"
    )
    if extra <= 0:
        return f"{gain} while using {-extra:,.0f} fewer tokens per task ({parts}; no extra cost)"
    text = (
        f"{gain} for {extra:,.0f} extra tokens per task ({parts}), i.e. "
        f"{tokens(c['tokens_per_point'])} tokens per point"
    )
    if c["extra_cost_per_task_usd"] <= 0:
        saved = usd(-1000 * c["extra_cost_per_task_usd"])
        return f"{text}, at no extra cost at the assumed prices (its cheaper token mix saves {saved} per 1,000 tasks)"
    return f"{text}, or {usd(c['cost_per_point_per_1k_tasks_usd'])} per point per 1,000 tasks"


def training_clause(t: dict[str, Any] | None) -> str:
    """The one-off cost of the training run, in one sentence."""
    if t is None:
        return (
            "This run directory holds no training record (log, metrics.jsonl or summary.json), "
            "so the one-off training cost is not counted."
        )
    wall = t["wall_time_s"]
    when = f"{wall / 60:.1f} min of wall time" if wall is not None else "an unrecorded wall time"
    if t["cpus"] is not None and t["core_hours"] is not None:
        where = f" on {t['cpus']:g} CPUs ({t['core_hours']:.3g} core-hours)"
    else:
        where = " (core-hours unknown: the run did not record its CPU count in metrics.jsonl)"
    gate = (
        f", plus {t['gate_episodes']:,} validation episodes played by the promotion gate"
        if t["gate_episodes"]
        else ""
    )
    return (
        f"Training the adapter cost once: {t['episodes']:,} episodes ({t['trials']:,} trials)"
        f"{gate}, {when}{where}, and {t['actor_tokens'] + t['reflection_tokens']:,} actor and "
        f"reflector tokens ({usd(t['token_cost_usd'])})."
    )
