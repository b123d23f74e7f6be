"""The report page: one self-contained HTML file (inline CSS, relative links to the PNGs).

``render`` takes the report dict built by ``retro_ray.report.build`` (the same content as
``report.json``); every piece of text from the logs goes through ``html.escape``.
"""

from __future__ import annotations

from html import escape
from typing import Any

from retro_ray.report.data import COMPARED
from retro_ray.report.text import label, price, tokens, usd

EVAL_HINT = "retro-ray eval --run RUN_DIR"
PRICE_FLAGS = "--price-prompt/--price-completion"

_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1000px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f4f4f4; }
.sd { color: #777; font-size: 0.85em; }
.answer { background: #f6f8ff; border-left: 4px solid #3b6fd8; padding: 0.6em 1em; }
.note { color: #555; font-size: 0.9em; }
img { max-width: 100%; border: 1px solid #eee; }
code { background: #f4f4f4; padding: 0 0.2em; }
"""


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def eval_hint(run_dir: str) -> str:
    return EVAL_HINT.replace("RUN_DIR", run_dir)


def cost_sentence(evaluation: dict[str, Any] | None, run_dir: str = "RUN_DIR") -> str:
    """The manager's answer in one sentence (plain text); ``run_dir`` goes into the command to
    run when the evaluation is missing."""
    if evaluation is None:
        return (
            "No evaluation was run, so there is no success or cost comparison yet: "
            f"run `{eval_hint(run_dir)}` and then this report again."
        )
    baseline, trials = label(evaluation["baseline"]), evaluation["trials"]
    if not evaluation["cost"]:
        present = evaluation["agents"]
        missing = [label(a) for a in (evaluation["baseline"], *COMPARED) if a not in present]
        return (
            f"The evaluation log has no {' and no '.join(missing)}, so there is no cost per "
            f"point against {baseline}: run `{eval_hint(run_dir)}` for the missing agents."
        )
    clauses = [_clause(label(agent), baseline, c) for agent, c in evaluation["cost"].items()]
    return f"At trial {trials}, against {baseline}: " + "; ".join(clauses) + "."


def _clause(name: str, baseline: str, c: dict[str, Any]) -> str:
    if c["no_gain"]:
        return (
            f"{name} shows no gain over {baseline} ({c['gain_points']:+.1f} points), "
            "so there is no cost per point"
        )
    gain = f"{name} gains {c['gain_points']:.1f} points"
    extra = c["extra_actor_tokens_per_task"]
    if extra <= 0:
        return f"{gain} while using {-extra:,.0f} fewer actor tokens per task (no extra cost)"
    text = (
        f"{gain} for {extra:,.0f} extra actor tokens per task, i.e. "
        f"{tokens(c['tokens_per_point'])} actor tokens per point"
    )
    if c["extra_cost_per_task_usd"] <= 0:
        saved = usd(-1000 * c["extra_cost_per_task_usd"])
        return f"{text}, at no extra cost at the assumed prices (its cheaper token mix saves {saved} per 1,000 tasks)"
    return f"{text}, or {usd(c['cost_per_point_per_1k_tasks_usd'])} per point per 1,000 tasks"


def _per_point_cells(c: dict[str, Any]) -> tuple[str, str]:
    """The table's tokens-per-point and cost-per-point cells (words where a ratio misleads)."""
    if c["no_gain"]:
        return "no gain", "no gain"
    if c["extra_actor_tokens_per_task"] <= 0:
        per_point = "none (fewer tokens)"
    else:
        per_point = tokens(c["tokens_per_point"])
    if c["extra_cost_per_task_usd"] <= 0:
        per_cost = f"none (saves {usd(-1000 * c['extra_cost_per_task_usd'])} per 1,000 tasks)"
    else:
        per_cost = usd(c["cost_per_point_per_1k_tasks_usd"])
    return per_point, per_cost


def _success_table(evaluation: dict[str, Any]) -> str:
    trials = evaluation["trials"]
    head = "".join(f"<th>trial {k + 1}</th>" for k in range(trials))
    rows = []
    for agent, s in evaluation["agents"].items():
        cells = "".join(
            f"<td>{_pct(m)} <span class='sd'>± {_pct(sd)}</span></td>"
            for m, sd in zip(s["mean"], s["std"], strict=True)
        )
        tasks = sorted(set(s["tasks_per_seed"].values()))
        rows.append(
            f"<tr><td>{escape(label(agent))}</td>{cells}<td>{_pct(s['spread'])}</td>"
            f"<td>{len(s['seeds'])}</td><td>{escape('/'.join(map(str, tasks)))}</td></tr>"
        )
    return (
        "<table><tr><th>agent</th>"
        + head
        + f"<th>spread at trial {trials} (pts)</th><th>seeds</th><th>tasks per seed</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _cost_table(evaluation: dict[str, Any]) -> str:
    trials = evaluation["trials"]
    base = label(evaluation["baseline"])
    rows = []
    for agent, c in evaluation["cost"].items():
        per_point, per_cost = _per_point_cells(c)
        rows.append(
            f"<tr><td>{escape(label(agent))}</td><td>{_pct(c['success'])}</td>"
            f"<td>{c['gain_points']:+.1f}</td><td>{c['actor_tokens_per_task']:,.0f}</td>"
            f"<td>{c['extra_actor_tokens_per_task']:+,.0f}</td><td>{per_point}</td>"
            f"<td>{per_cost}</td><td>{c['reflection_tokens_per_task']:,.0f}</td></tr>"
        )
    return (
        f"<table><tr><th>agent vs {escape(base)}</th><th>success at trial {trials} (%)</th>"
        "<th>gain (points)</th><th>actor tokens / task</th><th>extra actor tokens / task</th>"
        "<th>actor tokens per point gained</th><th>cost per point gained, per 1,000 tasks</th>"
        "<th>reflection tokens / task (not priced)</th></tr>" + "".join(rows) + "</table>"
    )


def _tokens_table(tokens: dict[str, dict[str, float]]) -> str:
    rows = "".join(
        f"<tr><td>{escape(label(a))}</td><td>{t['trials']:.2f}</td>"
        f"<td>{t['actor_prompt']:,.0f}</td><td>{t['actor_completion']:,.0f}</td>"
        f"<td>{t['actor']:,.0f}</td><td>{t['reflection']:,.0f}</td></tr>"
        for a, t in tokens.items()
    )
    return (
        "<table><tr><th>agent</th><th>trials played / task</th><th>actor prompt</th>"
        "<th>actor completion</th><th>actor total</th><th>reflection total</th></tr>"
        + rows
        + "</table>"
    )


def _figure(report: dict[str, Any], key: str, alt: str) -> str:
    name = report["figures"].get(key)
    if not name:
        return ""
    return f'<p><img src="{escape(name)}" alt="{escape(alt)}"></p>'


def _evaluation_section(report: dict[str, Any]) -> str:
    evaluation = report["evaluation"]
    prices = report["prices"]
    parts = ["<h2>Evaluation: success and cost per point</h2>"]
    parts.append(f"<p class='answer'>{escape(report['answer'])}</p>")
    if evaluation is None:
        parts.append(
            "<p class='note'>No evaluation log (<code>eval/experience</code>) in this run "
            f"directory. Run <code>{escape(eval_hint(report['run_dir']))}</code> to evaluate ReAct, Reflexion, "
            "Retroformer and the oracles on held-out tasks.</p>"
        )
        return "\n".join(parts)
    if evaluation["cost"]:
        parts.append(_cost_table(evaluation))
    parts.append(
        f"<p class='note'>Assumed price, set with <code>{PRICE_FLAGS}</code>: "
        f"{price(prices['prompt_per_mtok'])} per million prompt tokens and "
        f"{price(prices['completion_per_mtok'])} per million completion tokens "
        "(actor tokens only). "
        "Gain = difference in cumulative success at the last trial, seed means, in points "
        "(1 point = 1 % of tasks). Actor tokens per point = extra actor tokens per task / gain; "
        "100 times it buys one additional solved task. Cost per point per 1,000 tasks = "
        "1,000 × extra actor cost per task / gain.</p>"
    )
    parts.append("<h3>Cumulative success by trial (% of tasks, ± std over seeds)</h3>")
    parts.append(_success_table(evaluation))
    if any(len(s["seeds"]) < 2 for s in evaluation["agents"].values()):
        parts.append(
            "<p class='note'>One seed: no spread. <code>retro-ray eval --seeds 3</code> "
            "evaluates three draws of test tasks.</p>"
        )
    parts.append(_figure(report, "success_by_trial", "cumulative success by trial per agent"))
    parts.append("<h3>Tokens per task (mean over seeds; all trials of a task)</h3>")
    parts.append(_tokens_table(evaluation["tokens_per_task"]))
    parts.append(_figure(report, "cost", "actor tokens per task and per point gained"))
    return "\n".join(parts)


def _training_section(report: dict[str, Any]) -> str:
    training = report["training"]
    parts = ["<h2>Training</h2>"]
    reward = training["reward_by_iteration"]
    summary = training.get("summary") or {}
    facts = []
    if summary:
        facts.append(
            f"{summary.get('iterations', '?')} iterations, train adapter "
            f"v{summary.get('train_version', '?')}, prod v{summary.get('prod_version', '?')}, "
            f"{float(summary.get('wall_time_s') or 0) / 60:.1f} min wall time"
        )
    if reward:
        first, last = reward[0], reward[-1]
        facts.append(
            f"mean reflection reward {first['mean']:.3f} at iteration {first['iteration']} "
            f"→ {last['mean']:.3f} at iteration {last['iteration']} "
            f"({sum(r['n'] for r in reward):,} rewarded trials)"
        )
    tp = training["throughput"]
    if tp.get("minutes"):
        facts.append(
            f"{tp['episodes']:,} episodes and {tp['trials']:,} trials in "
            f"{tp['span_s'] / 60:.1f} min: {tp['mean_episodes_per_min']:.1f} episodes/min, "
            f"{tp['mean_trials_per_min']:,.1f} trials/min"
        )
    if facts:
        parts.append("<ul>" + "".join(f"<li>{escape(f)}</li>" for f in facts) + "</ul>")
    else:
        parts.append("<p class='note'>No training log in this run directory.</p>")
    parts.append(_figure(report, "reflection_reward", "reflection reward per iteration"))
    parts.append(_figure(report, "throughput", "training throughput"))
    return "\n".join(parts)


def render(report: dict[str, Any]) -> str:
    """The whole page."""
    sources = "".join(
        f"<li>{escape(k)}: <code>{escape(v)}</code></li>" for k, v in report["sources"].items() if v
    )
    notes = "".join(f"<li>{escape(n)}</li>" for n in report.get("notes", []))
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>retro-ray report: {escape(report['run'])}</title>",
            f"<style>{_CSS}</style></head><body>",
            f"<h1>Run <code>{escape(report['run'])}</code></h1>",
            f"<p class='note'>{escape(report['run_dir'])} · generated "
            f"{escape(report['generated_at'])}</p>",
            _evaluation_section(report),
            _training_section(report),
            "<h2>Sources</h2>",
            f"<ul class='note'>{sources}{notes}</ul>",
            "</body></html>",
        ]
    )
