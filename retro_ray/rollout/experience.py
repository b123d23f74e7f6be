"""The experience log: every trial, reflection and reward of a run, as Parquet files.

Layout (hive partitioning, readable with ``pyarrow.dataset``, Ray Data and pandas)::

    <root>/run=<run_id>/iteration=<n>/part-<uuid>.parquet

One row per played trial, keyed by ``(run, iteration, task_id, trial, sample)``. ``sample`` is the
branch: in Retroformer collection the ``m`` reflections written after a failed trial ``k`` of the
main chain each get one trial ``k+1`` (samples ``0..m-1``; the main chain continues with sample 0);
in evaluation every trial is sample 0. The reflection columns describe the reflection the trial
was played *with* (the newest one in the actor's memory), so a row is a complete policy-gradient
sample: ``prompt`` x, ``reflection`` y with its token ids and log-probs, ``return_before`` G(k),
``return_after`` G(k+1) and ``reward`` = G(k+1) - G(k).

Exactly once: an episode (one task of one iteration) is written as one file whose name is a
deterministic UUID of ``(run, iteration, task_id)``, first under a temporary name and then renamed
into place (atomic on POSIX). A retried episode (its worker died before reporting, or the driver
restarted) therefore replaces the same file whole: readers see the first attempt or the last,
never both and never half a file. Since an episode's rows are distinct in ``(trial, sample)`` by
construction, each key is present exactly once without any dedupe on read. A finished file is
also the resume marker: a rerun skips the tasks whose file exists.

Run and iteration live in the directory names (the partition columns ``run`` and ``iteration``)
and in each file's key-value metadata, so a file copied on its own still says where it belongs.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

SCHEMA_VERSION = 1
"""Bumped on any change of the columns below; readers check it (``schema_version`` column)."""

_NAMESPACE = uuid.UUID("6f1d3c1e-2a4b-4c55-9a2e-5e0f7a9b1c3d")  # fixed: file names are stable


@dataclass
class ExperienceRow:
    """One played trial. Column docs live here; ``SCHEMA`` is derived from these fields."""

    task_id: str
    split: str
    env: str
    mode: str  # collection mode: "train" (branching) or an evaluation agent ("reflexion", ...)
    trial: int  # 0-based index of the trial played
    sample: int  # branch of the reflection it was played with (0: the main chain)
    won: bool
    return_after: float  # G(k+1): this trial's return
    return_before: float | None = None  # G(k) of the failed main-chain trial before (None at 0)
    reward: float | None = None  # G(k+1) - G(k) when a reflection was written, else None
    prompt: str | None = None  # reflection prompt x (what the reflector read)
    reflection: str | None = None  # reflection y this trial was played with
    reflection_token_ids: list[int] | None = None  # from the engine, never re-tokenised
    reflection_logprobs: list[float] | None = None  # sampler's log pi(token), per token
    memory: list[str] = field(default_factory=list)  # every reflection in the actor's prompt
    adapter_version: str | None = None  # model/adapter that wrote the reflection (engine's name)
    actor_model: str = ""
    steps: int = 0
    invalid_actions: int = 0
    trajectory: str = ""  # rendered ``> action`` / observation text
    actor_prompt_tokens: int = 0
    actor_completion_tokens: int = 0
    reflection_prompt_tokens: int = 0
    reflection_completion_tokens: int = 0
    cost: float = 0.0  # actor and reflection calls, at the configured prices
    latency_s: float = 0.0  # wall time of the trial (actor calls and environment steps)
    reflection_latency_s: float = 0.0  # wall time of the reflection call
    attempt: int = 0  # how many earlier attempts of this episode failed (worker crash, outage)
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.task_id, self.trial, self.sample)


_TYPES: dict[str, pa.DataType] = {
    "task_id": pa.string(),
    "split": pa.string(),
    "env": pa.string(),
    "mode": pa.string(),
    "trial": pa.int32(),
    "sample": pa.int32(),
    "won": pa.bool_(),
    "return_after": pa.float64(),
    "return_before": pa.float64(),
    "reward": pa.float64(),
    "prompt": pa.string(),
    "reflection": pa.string(),
    "reflection_token_ids": pa.list_(pa.int32()),
    "reflection_logprobs": pa.list_(pa.float32()),
    "memory": pa.list_(pa.string()),
    "adapter_version": pa.string(),
    "actor_model": pa.string(),
    "steps": pa.int32(),
    "invalid_actions": pa.int32(),
    "trajectory": pa.string(),
    "actor_prompt_tokens": pa.int64(),
    "actor_completion_tokens": pa.int64(),
    "reflection_prompt_tokens": pa.int64(),
    "reflection_completion_tokens": pa.int64(),
    "cost": pa.float64(),
    "latency_s": pa.float64(),
    "reflection_latency_s": pa.float64(),
    "attempt": pa.int32(),
    "started_at": pa.timestamp("us", tz="UTC"),
    "finished_at": pa.timestamp("us", tz="UTC"),
}
_NON_NULL = {"task_id", "split", "env", "mode", "trial", "sample", "won", "return_after"}

SCHEMA = pa.schema(
    [pa.field("schema_version", pa.int16(), nullable=False)]
    + [
        pa.field(f.name, _TYPES[f.name], nullable=f.name not in _NON_NULL)
        for f in fields(ExperienceRow)
    ]
)
"""The file schema (version ``SCHEMA_VERSION``); ``run`` and ``iteration`` are partition columns."""

PARTITIONING = ds.partitioning(
    pa.schema([("run", pa.string()), ("iteration", pa.int32())]), flavor="hive"
)

KEY_COLUMNS = ("run", "iteration", "task_id", "trial", "sample")
"""The exactly-once key of a row."""


def now_utc() -> datetime:
    return datetime.now(UTC)


def episode_file_name(run_id: str, iteration: int, task_id: str) -> str:
    """Deterministic: a retried episode overwrites its earlier attempt instead of adding to it."""
    name = uuid.uuid5(_NAMESPACE, "\x1f".join((run_id, str(iteration), task_id)))
    return f"part-{name}.parquet"


def to_table(rows: Sequence[ExperienceRow]) -> pa.Table:
    columns: dict[str, list[Any]] = {"schema_version": [SCHEMA_VERSION] * len(rows)}
    for f in fields(ExperienceRow):
        columns[f.name] = [getattr(r, f.name) for r in rows]
    return pa.Table.from_pydict(columns, schema=SCHEMA)


def from_table(table: pa.Table) -> list[ExperienceRow]:
    names = {f.name for f in fields(ExperienceRow)}
    return [ExperienceRow(**{k: v for k, v in r.items() if k in names}) for r in table.to_pylist()]


class ExperienceLog:
    """Writes and reads the log under ``root`` (a local or mounted shared directory)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def partition(self, run_id: str, iteration: int) -> Path:
        _check_run_id(run_id)
        return self.root / f"run={run_id}" / f"iteration={iteration}"

    def write_episode(
        self, run_id: str, iteration: int, task_id: str, rows: Sequence[ExperienceRow]
    ) -> Path:
        """Write one finished episode atomically; returns the final path."""
        if len({r.key for r in rows}) != len(rows):
            raise ValueError(f"episode {task_id!r} has duplicate (task, trial, sample) rows")
        directory = self.partition(run_id, iteration)
        directory.mkdir(parents=True, exist_ok=True)
        final = directory / episode_file_name(run_id, iteration, task_id)
        # A dot-name: pyarrow.dataset, pandas and Ray Data all skip hidden files, so readers
        # never pick up a half-written temporary file.
        tmp = directory / f".{final.name}.{uuid.uuid4().hex}.tmp"
        metadata = {
            b"retro_ray.schema_version": str(SCHEMA_VERSION).encode(),
            b"retro_ray.run": run_id.encode(),
            b"retro_ray.iteration": str(iteration).encode(),
        }
        table = to_table(rows).replace_schema_metadata(metadata)
        try:
            pq.write_table(table, tmp)
            os.replace(tmp, final)  # atomic: the old attempt or the new one, never a mix
        finally:
            tmp.unlink(missing_ok=True)
        return final

    def dataset(self) -> ds.Dataset:
        """The whole log as one ``pyarrow.dataset`` (partition columns ``run``, ``iteration``)."""
        return ds.dataset(self.root, format="parquet", partitioning=PARTITIONING)

    def read(
        self,
        run_id: str | None = None,
        iteration: int | None = None,
        columns: Sequence[str] | None = None,
    ) -> pa.Table:
        """Rows of one run / iteration (default: all); ``columns`` reads only those (trajectories
        and prompts are most of a log's bytes)."""
        if not self.root.exists():
            table = to_table([]).append_column("run", pa.array([], pa.string()))
            table = table.append_column("iteration", pa.array([], pa.int32()))
            return table.select(list(columns)) if columns else table
        if columns is not None and "schema_version" not in columns:
            columns = ["schema_version", *columns]
        expr = None
        if run_id is not None:
            expr = ds.field("run") == run_id
        if iteration is not None:
            cond = ds.field("iteration") == iteration
            expr = cond if expr is None else expr & cond
        table = self.dataset().to_table(filter=expr, columns=columns and list(columns))
        versions = set(table.column("schema_version").to_pylist()) if table.num_rows else set()
        if versions - {SCHEMA_VERSION}:
            raise ValueError(f"experience log {self.root} holds schema versions {versions}")
        return table

    def finished_tasks(self, run_id: str, iteration: int) -> set[str]:
        """Task ids whose episode is on disk (the resume set): reads only one column."""
        directory = self.partition(run_id, iteration)
        if not directory.exists() or not any(directory.glob("part-*.parquet")):
            return set()
        table = ds.dataset(directory, format="parquet").to_table(columns=["task_id"])
        return set(table.column("task_id").to_pylist())


def _check_run_id(run_id: str) -> None:
    if not run_id or any(c in run_id for c in "/=\\") or run_id.startswith("."):
        raise ValueError(f"run id {run_id!r} must be non-empty, without '/', '\\\\' or '='")
