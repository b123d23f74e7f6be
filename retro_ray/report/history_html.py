"""The report page's section on the promotion gate and the registry's history: the gate's
decisions and the promotions, rollbacks and approvals, each as a table (the numbers come from
``history``). Every piece of text from the logs goes through ``html.escape``.
"""

from __future__ import annotations

from html import escape
from typing import Any


def _value(x: Any) -> str:
    if x is None:
        return ""
    if isinstance(x, float):
        return f"{x:.3f}"
    return str(x)


def _decision(gate: dict[str, Any]) -> str:
    words = {"promote": "promote", "reject": "keep current", "pending": "wait for approval"}
    outcome = gate["outcome"]
    return words.get(outcome, str(outcome).replace("_", " ")) if outcome else "?"


def _gate_table(gates: list[dict[str, Any]]) -> str:
    rows = "".join(
        f"<tr><td>{escape(_value(g['time']))}</td><td>{escape(_value(g['iteration']))}</td>"
        f"<td>{escape(_value(g['candidate']))}</td><td>{escape(_value(g['candidate_return']))}</td>"
        f"<td>{escape(_value(g['current']))}</td><td>{escape(_value(g['current_return']))}</td>"
        f"<td>{escape(_value(g['margin']))}</td><td>{escape(_decision(g))}</td>"
        f"<td>{escape(str(g['reason']))}</td></tr>"
        for g in gates
    )
    return (
        "<table class='history'><tr><th>time (UTC)</th><th>iteration</th><th>candidate</th>"
        "<th>its return</th><th>current prod</th><th>its return</th><th>margin</th>"
        "<th>decision</th><th>reason</th></tr>" + rows + "</table>"
    )


def _history_table(events: list[dict[str, Any]]) -> str:
    def other(e: dict[str, Any]) -> str:
        return ", ".join(f"{k}={_value(v)}" for k, v in e["other"].items())

    rows = "".join(
        f"<tr><td>{escape(_value(e['time']))}</td><td>{escape(e['event'])}</td>"
        f"<td>{escape(_value(e['alias']))}</td><td>{escape(_value(e['version']))}</td>"
        f"<td>{escape(_value(e['previous']))}</td><td>{escape(_value(e['by']))}</td>"
        f"<td>{escape(str(e['reason']))}</td><td>{escape(other(e))}</td></tr>"
        for e in events
    )
    return (
        "<table class='history'><tr><th>time (UTC)</th><th>event</th><th>alias</th>"
        "<th>version</th><th>previous</th><th>by</th><th>reason</th><th>details</th></tr>"
        + rows
        + "</table>"
    )


def history_section(report: dict[str, Any]) -> str:
    registry = report.get("registry")
    if registry is None:
        return ""
    parts = ["<h2>Promotion gate and registry history</h2>"]
    published = registry["published_versions"]
    where = f"Registry <code>{escape(registry['root'])}</code>"
    if not registry["found"] and not registry["gate"]:
        parts.append(
            f"<p class='note'>{where}: no events found (no <code>events.jsonl</code>), so no "
            "gate decision, promotion, rollback or approval to show.</p>"
        )
        return "\n".join(parts)
    span = f" (v{published[0]} to v{published[-1]})" if published else ""
    parts.append(f"<p class='note'>{where}: {len(published)} versions published{span}.</p>")
    parts.append("<h3>Gate decisions</h3>")
    if registry["gate"]:
        parts.append(_gate_table(registry["gate"]))
    else:
        parts.append("<p class='note'>The gate made no decision in this run.</p>")
    events = [e for e in registry["events"] if e["event"] != "gate"]
    parts.append("<h3>Promotions, rollbacks and approvals</h3>")
    if events:
        parts.append(_history_table(events))
    else:
        parts.append("<p class='note'>No alias was moved and nothing was approved.</p>")
    return "\n".join(parts)
