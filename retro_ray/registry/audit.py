"""The registry's audit log, ``<root>/events.jsonl``, read back: every event, and the history of
alias changes (``registry_history``). It needs the directory alone, no base model. The events are
written by ``AdapterRegistry`` (``retro_ray.registry.store``), under the registry's lock."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

HISTORY_EVENTS = ("promote", "rollback", "pending", "approve")
"""The events ``registry_history`` returns: every change of an alias, and every request for one."""


def read_events(root: str | Path) -> list[dict[str, Any]]:
    """``<root>/events.jsonl``, oldest first; a torn line (a crash mid-append) is skipped."""
    path = Path(root) / "events.jsonl"
    if not path.is_file():
        return []
    found = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            found.append(json.loads(line))
        except json.JSONDecodeError:
            logger.warning("%s: skipping a torn line", path)
    return found


def registry_history(root: str | Path) -> list[dict[str, Any]]:
    """Every promotion, rollback, pending promotion and approval of the registry at ``root``,
    oldest first, from its ``events.jsonl`` (no base model needed: it reads the log alone).

    Each entry has exactly these fields:

    - ``time`` (float, epoch seconds) and ``event``: ``promote`` (the gate, or an operator with
      ``retro-ray registry promote``, moved the alias), ``rollback`` (an operator moved it back),
      ``pending`` (approval mode: the gate passed the version; the alias has not moved) or
      ``approve`` (a person approved a pending promotion: the alias moved);
    - ``alias`` (``train`` / ``prod``), ``version`` (int: the version the alias moved to, or the
      one waiting), ``previous`` (int or None: the alias's version before; None for ``pending``);
    - ``reason`` (str: the gate's reason, or the operator's / approver's words);
    - ``by`` (str or None: who approved, or who promoted or rolled back when given; None for
      the gate);
    - ``gate_reason`` (str or None: for ``approve``, the reason the gate passed the version);
    - ``run`` (str or None: the run that had the registry open, when it said).
    """
    return [
        {
            "time": float(e.get("time", 0.0)),
            "event": e["event"],
            "alias": e.get("alias"),
            "version": int(e["version"]),
            "previous": e.get("previous"),
            "reason": e.get("reason") or "",
            "by": e.get("by"),
            "gate_reason": e.get("gate_reason"),
            "run": e.get("run"),
        }
        for e in read_events(root)
        if e.get("event") in HISTORY_EVENTS and e.get("version") is not None
    ]
