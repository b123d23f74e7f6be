"""What was learned, for the report: the base and the trained reflection side by side on
held-out tasks whose first trial both lost, each with a short excerpt of the trials around it.
Pure functions over the evaluation log's rows, like ``data``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from retro_ray.evaluation.success import Rows, records

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
