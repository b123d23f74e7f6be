"""Gather run summaries into one table, written as Parquet and as Markdown.

A row is flat: the swept settings (dotted keys), identifiers (``point``, ``run``, ``agent``),
``status``, then the metrics of the run's summary JSON (``retro-ray eval --json``): tasks,
cumulative success after each trial (``success@1`` ...), final success and mean return, tokens.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

Row = dict[str, Any]

# Scalar fields copied from a summary as they are.
_SCALARS = ("tasks", "success_rate", "trials_run", "actor_cost", "env", "split")


def summary_metrics(summary: Mapping[str, Any]) -> Row:
    """The flat metrics of one summary (``retro_ray.agents.results.summarize`` plus extras).

    Unknown scalar fields (a train summary's, say) are kept as they are; lists that are not
    per-trial series are dropped.
    """
    row: Row = {}
    for k, value in enumerate(summary.get("success_by_trial", [])):
        row[f"success@{k + 1}"] = float(value)
    returns = summary.get("mean_return_by_trial", [])
    if returns:
        row["mean_return"] = float(returns[-1])
    for key in _SCALARS:
        if key in summary:
            row[key] = summary[key]
    for key, value in summary.items():
        if key not in row and isinstance(value, int | float | str | bool) and key not in _SKIP:
            row[key] = value
    return row


_SKIP = {"success_by_trial", "mean_return_by_trial"}


def agent_rows(table: Mapping[str, Any]) -> list[Row]:
    """One flat row per agent of a ``retro-ray eval --json`` table."""
    return [{"agent": agent, **summary_metrics(row)} for agent, row in table["agents"].items()]


def columns(rows: Sequence[Row]) -> list[str]:
    """The union of the rows' keys, in first-seen order."""
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


def to_arrow(rows: Sequence[Row]) -> pa.Table:
    """One Arrow table; a key a row lacks is null there. Mixed-type columns become strings."""
    cols = columns(rows)
    arrays = {}
    for col in cols:
        values = [row.get(col) for row in rows]
        try:
            arrays[col] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            arrays[col] = pa.array([None if v is None else str(v) for v in values])
    return pa.table(arrays)


def markdown(rows: Sequence[Row], cols: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table (floats with 3 decimals, missing cells empty)."""
    cols = list(cols or columns(rows))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in cols) + " |")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def seed_means(rows: Sequence[Row], group_keys: Sequence[str], metrics: Sequence[str]) -> list[Row]:
    """Mean and standard deviation of ``metrics`` over the rows sharing ``group_keys`` (the
    hyperparameters), i.e. over seeds; only rows with status ``ok`` count."""
    groups: dict[tuple[Any, ...], list[Row]] = {}
    for row in rows:
        if row.get("status") == "ok":
            groups.setdefault(tuple(row.get(k) for k in group_keys), []).append(row)
    out = []
    for key, members in groups.items():
        agg: Row = dict(zip(group_keys, key, strict=True))
        agg["runs"] = len(members)
        for m in metrics:
            values = [float(r[m]) for r in members if isinstance(r.get(m), int | float)]
            if values:
                agg[f"{m} mean"] = statistics.fmean(values)
                agg[f"{m} std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        out.append(agg)
    return out


def write_table(
    rows: Sequence[Row], out_dir: Path, stem: str, title: str, extra_md: str = ""
) -> tuple[Path, Path]:
    """Write ``<stem>.parquet`` and ``<stem>.md`` under ``out_dir``; returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    parquet_path, md_path = out_dir / f"{stem}.parquet", out_dir / f"{stem}.md"
    pq.write_table(to_arrow(rows), parquet_path)
    md_path.write_text(f"# {title}\n\n{markdown(rows)}\n{extra_md}")
    return parquet_path, md_path
