"""The report page: one self-contained HTML file (inline CSS, relative links to the PNGs).

``render`` takes the report dict built by ``retro_ray.report.build`` (the same content as
``report.json``); every piece of text from the logs goes through ``html.escape``. The answer's
sentences are written by ``answer``, the gate and registry history section by ``history_html``.
"""

from __future__ import annotations

from html import escape
from typing import Any

from retro_ray.report.answer import eval_hint, training_clause
from retro_ray.report.history_html import history_section
from retro_ray.report.text import label, price, tokens, usd

PRICE_FLAGS = "--price-prompt/--price-completion"
REFLECTOR_PRICE_FLAGS = "--price-reflector-prompt/--price-reflector-completion"

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
table.pair td, table.history td { text-align: left; vertical-align: top; }
table.pair td { width: 45%; } table.pair td:first-child { width: 10%; }
pre { white-space: pre-wrap; word-break: break-word; margin: 0.2em 0; font-size: 0.88em; }
.won { color: #1a7f37; font-weight: bold; } .lost { color: #b42318; font-weight: bold; }
"""


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _per_point_cells(c: dict[str, Any]) -> tuple[str, str]:
    """The table's tokens-per-point and cost-per-point cells (words where a ratio misleads)."""
    if c["no_gain"]:
        return "no gain", "no gain"
    if c["extra_tokens_per_task"] <= 0:
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
            f"<td>{c['reflection_tokens_per_task']:,.0f}</td>"
            f"<td>{c['extra_tokens_per_task']:+,.0f}</td><td>{per_point}</td>"
            f"<td>{per_cost}</td></tr>"
        )
    return (
        f"<table><tr><th>agent vs {escape(base)}</th><th>success at trial {trials} (%)</th>"
        "<th>gain (points)</th><th>actor tokens / task</th><th>reflector tokens / task</th>"
        "<th>extra tokens / task (actor + reflector)</th><th>tokens per point gained</th>"
        "<th>cost per point gained, per 1,000 tasks</th></tr>" + "".join(rows) + "</table>"
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
    parts.append(_price_note(prices))
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


def _price_note(prices: dict[str, Any]) -> str:
    defaulted = (
        " (by default the actor's prices: a self-hosted reflector's tokens cost what serving "
        "them costs; set them when that differs)"
        if prices["reflector_prices_default_to_actor"]
        else ""
    )
    return (
        f"<p class='note'>Assumed prices, USD per million tokens. Actor, set with "
        f"<code>{PRICE_FLAGS}</code>: {price(prices['prompt_per_mtok'])} per million prompt "
        f"tokens and {price(prices['completion_per_mtok'])} per million completion tokens. "
        f"Reflector, set with <code>{REFLECTOR_PRICE_FLAGS}</code>: "
        f"{price(prices['reflector_prompt_per_mtok'])} per million prompt tokens and "
        f"{price(prices['reflector_completion_per_mtok'])} per million completion tokens"
        f"{defaulted}. "
        "Gain = difference in cumulative success at the last trial, seed means, in points "
        "(1 point = 1 % of tasks). Tokens per point = extra actor and reflector tokens per task "
        "/ gain; 100 times it buys one additional solved task. Cost per point per 1,000 tasks = "
        "1,000 × extra actor and reflector cost per task / gain. The training run's one-off "
        "cost is in the answer above and under Training.</p>"
    )


def _outcome(won: bool, value: float) -> str:
    word = "<span class='won'>won</span>" if won else "<span class='lost'>lost</span>"
    return f"{word}, return {value:.2f}"


def _example_table(example: dict[str, Any], examples: dict[str, Any]) -> str:
    sides = (example["base"], example["trained"])
    roles = ("base reflector", "trained adapter")

    def head(side: dict[str, Any], role: str) -> str:
        adapter = (
            f" <code>{escape(side['adapter_version'])}</code>" if side["adapter_version"] else ""
        )
        return f"<th>{escape(label(side['agent']))}: {role}{adapter}</th>"

    def cells(render: Any) -> str:
        return "".join(f"<td>{render(side)}</td>" for side in sides)

    differs = " · outcomes differ" if example["differs"] else ""
    return "\n".join(
        [
            f"<h3>Task <code>{escape(example['task_id'])}</code> · seed "
            f"{escape(str(example['seed']))}{differs}</h3>",
            "<table class='pair'><tr><th></th>"
            + "".join(head(side, role) for side, role in zip(sides, roles, strict=True))
            + "</tr>",
            "<tr><td>trial 1</td>"
            + cells(
                lambda s: (
                    f"{_outcome(False, s['failed_return'])}<pre>{escape(s['failed_excerpt'])}</pre>"
                )
            )
            + "</tr>",
            "<tr><td>reflection</td>"
            + cells(lambda s: f"<pre>{escape(s['reflection']) or '(empty)'}</pre>")
            + "</tr>",
            "<tr><td>trial 2</td>"
            + cells(lambda s: f"{_outcome(s['won'], s['return'])}<pre>{escape(s['excerpt'])}</pre>")
            + "</tr></table>",
        ]
    )


def _examples_section(report: dict[str, Any]) -> str:
    examples = report.get("examples")
    if report["evaluation"] is None:
        return ""
    parts = ["<h2>What was learned: the base and the trained reflection side by side</h2>"]
    if examples is None:
        parts.append(
            "<p class='note'>The evaluation has no Reflexion or no Retroformer, so there is no "
            f"reflection to compare: run <code>{escape(eval_hint(report['run_dir']))}</code> "
            "with both.</p>"
        )
        return "\n".join(parts)
    base, trained = label(examples["base_agent"]), label(examples["trained_agent"])
    parts.append(
        f"<p class='note'>Held-out tasks whose first trial both {escape(base)} and "
        f"{escape(trained)} lost: the reflection each reflector wrote about it, and what the "
        "actor then did in trial 2 (its actions and the outcome). "
        f"{examples['eligible']} such task draws, {examples['differing']} with different "
        f"outcomes in trial 2; shown: {len(examples['examples'])}, those with different "
        "outcomes first, then by task id.</p>"
    )
    parts.extend(_example_table(e, examples) for e in examples["examples"])
    return "\n".join(parts)


def _training_cost_facts(t: dict[str, Any] | None) -> list[str]:
    if t is None:
        return []
    facts = [training_clause(t)]
    if t["wall_time_source"]:
        facts.append(f"wall time from {t['wall_time_source']}")
    facts.append(
        f"training tokens: actor {t['actor_tokens']:,} ({usd(t['actor_cost_usd'])}), reflector "
        f"{t['reflection_tokens']:,} ({usd(t['reflector_cost_usd'])}) at the assumed prices"
    )
    return facts


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
    facts.extend(_training_cost_facts(training.get("cost")))
    if facts:
        parts.append("<ul>" + "".join(f"<li>{escape(f)}</li>" for f in facts) + "</ul>")
    else:
        parts.append("<p class='note'>No training log in this run directory.</p>")
    parts.append(_figure(report, "reflection_reward", "reflection reward per iteration"))
    parts.append(_figure(report, "throughput", "training throughput"))
    return "\n".join(parts)


def _learning_curve_section(report: dict[str, Any]) -> str:
    curves = report.get("learning_curves")
    if not curves:
        return ""
    rows = "".join(
        f"<tr><td>{escape(label(agent))}</td><td>{p['episodes']:,}</td>"
        f"<td>{_pct(p['success'])}</td></tr>"
        for agent, points in curves.items()
        for p in points
    )
    return "\n".join(
        [
            "<h2>Learning curves: success against environment episodes</h2>",
            "<p class='note'>Test success by the last trial against the environment episodes "
            "(trials) consumed in training: Retroformer's collection (branches included; at 0 "
            "its reflector is the untrained base, Reflexion) and each RL baseline's training.</p>",
            f"<table><tr><th>agent</th><th>training episodes</th><th>success</th></tr>{rows}"
            "</table>",
            _figure(report, "learning_curve", "test success against training episodes"),
        ]
    )


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
            _learning_curve_section(report),
            _examples_section(report),
            _training_section(report),
            history_section(report),
            "<h2>Sources</h2>",
            f"<ul class='note'>{sources}{notes}</ul>",
            "</body></html>",
        ]
    )
