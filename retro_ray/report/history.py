"""The run's history in the registry, for the report: every promotion-gate decision (from the
driver's ``gates.jsonl``, the registry's events and ``metrics.jsonl``), and the promotions,
rollbacks, pending promotions and approvals, in the report's shape. Pure functions over the
records, like ``data``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

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
