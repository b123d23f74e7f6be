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

Under crashes (power cut, node loss, a worker killed mid-write):

- **Durable**: the file's data is fsynced before the rename and its directory after it (and every
  directory the write created), so a task in the resume set is really on disk.
- **Quarantine**: a part file that cannot be read (torn, truncated, corrupt) is moved aside to
  ``<root>/_quarantine/`` (same relative path) with a logged warning, and the read goes on without
  it; its task is then missing from ``finished_tasks``, so the next collection of that iteration
  plays it again. One bad file never makes the whole log unreadable.
- **Fence**: once a collection has finished an iteration it fences it (``fence``) before the
  driver reads it. A late attempt of a retried episode (its first worker was unreachable, not
  dead, and finished after all) finds the fence when it comes to rename its file into place and
  drops the file (``EpisodeFenced``), so nothing changes under what the driver read and trained
  on. Writers hold a shared ``flock`` on the iteration's lock file while they check the fence and
  rename; ``fence`` takes it exclusively, so no check-then-rename race is left. On a shared mount
  across nodes this needs a filesystem whose ``flock`` is cluster-wide (NFSv4, CephFS, Lustre with
  ``flock``); a local disk on one node always qualifies.

Control files live under ``_``-prefixed directories at the root (``_staging``, ``_fences``,
``_quarantine``): pyarrow, pandas and Ray Data skip paths starting with ``_`` or ``.``, so no
reader ever mistakes them for data, and no half-written file sits in a partition directory.

Run and iteration live in the directory names (the partition columns ``run`` and ``iteration``)
and in each file's key-value metadata, so a file copied on its own still says where it belongs.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from retro_ray.durable import make_dirs, replace_durably
from retro_ray.safe_text import sanitize_value

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 3
"""Bumped on any change of the columns below; readers check it (``schema_version`` column) and
read every older version (columns added since read as null). 2: ``failure``. 3:
``reflection_prompt_token_ids`` and ``adapter_version_number`` (rows of older logs have neither:
the learner tokenises their prompt text, and only a completion-format prompt, which is all those
logs hold)."""

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
    reflection_prompt_token_ids: list[int] | None = None  # the prompt's ids as the engine saw
    # them (after the chat template, if any): the learner trains on these, not on the text
    reflection_logprobs: list[float] | None = None  # sampler's log pi(token), per token
    memory: list[str] = field(default_factory=list)  # every reflection in the actor's prompt
    adapter_version: str | None = None  # model/adapter that wrote the reflection (engine's name)
    adapter_version_number: int | None = None  # its registry version (0: the base model), from
    # the server; None for models outside the registry
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
    failure: str | None = None  # why the episode stopped at this trial on bad input (a request
    # the endpoint rejected, an empty reflection); None: played normally. A failed episode counts
    # as unsolved, and the run goes on.
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
    "reflection_prompt_token_ids": pa.list_(pa.int32()),
    "reflection_logprobs": pa.list_(pa.float32()),
    "memory": pa.list_(pa.string()),
    "adapter_version": pa.string(),
    "adapter_version_number": pa.int32(),
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
    "failure": pa.string(),
    "started_at": pa.timestamp("us", tz="UTC"),
    "finished_at": pa.timestamp("us", tz="UTC"),
}
_TEXT_COLUMNS = {
    name for name, kind in _TYPES.items() if kind in (pa.string(), pa.list_(pa.string()))
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
    """The rows as a table of ``SCHEMA``; text is sanitised (a lone surrogate from a model's
    output would make the Parquet write fail and lose the episode)."""
    columns: dict[str, list[Any]] = {"schema_version": [SCHEMA_VERSION] * len(rows)}
    for f in fields(ExperienceRow):
        values = [getattr(r, f.name) for r in rows]
        if f.name in _TEXT_COLUMNS:
            values = [sanitize_value(v) for v in values]
        columns[f.name] = values
    return pa.Table.from_pydict(columns, schema=SCHEMA)


def from_table(table: pa.Table) -> list[ExperienceRow]:
    names = {f.name for f in fields(ExperienceRow)}
    return [ExperienceRow(**{k: v for k, v in r.items() if k in names}) for r in table.to_pylist()]


class EpisodeFenced(RuntimeError):
    """A late attempt of an episode found its iteration fenced (already read): its file is
    dropped, the log is unchanged."""


class ExperienceLog:
    """Writes and reads the log under ``root`` (a local or mounted shared directory)."""

    STAGING, FENCES, QUARANTINE = "_staging", "_fences", "_quarantine"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def partition(self, run_id: str, iteration: int) -> Path:
        _check_run_id(run_id)
        return self.root / f"run={run_id}" / f"iteration={iteration}"

    def write_episode(
        self, run_id: str, iteration: int, task_id: str, rows: Sequence[ExperienceRow]
    ) -> Path:
        """Write one finished episode atomically and durably; returns the final path. Raises
        ``EpisodeFenced`` (and leaves the log as it was) if the iteration was fenced."""
        if len({r.key for r in rows}) != len(rows):
            raise ValueError(f"episode {task_id!r} has duplicate (task, trial, sample) rows")
        directory = make_dirs(self.partition(run_id, iteration))
        final = directory / episode_file_name(run_id, iteration, task_id)
        staging = make_dirs(self.root / self.STAGING)
        tmp = staging / f"{final.name}.{uuid.uuid4().hex}.tmp"
        metadata = {
            b"retro_ray.schema_version": str(SCHEMA_VERSION).encode(),
            b"retro_ray.run": run_id.encode(),
            b"retro_ray.iteration": str(iteration).encode(),
        }
        table = to_table(rows).replace_schema_metadata(metadata)
        try:
            with tmp.open("wb") as f:
                # a few rows per file: column statistics and dictionaries cost more than they
                # save (0.65 -> 0.51 ms per episode written, 16.9 -> 7.2 KB per file)
                pq.write_table(table, f, write_statistics=False, use_dictionary=False)
                f.flush()
                os.fsync(f.fileno())  # the data is on disk before the name points at it
            with self._iteration_lock(run_id, iteration, exclusive=False):
                if self.is_fenced(run_id, iteration):
                    logger.warning(
                        "experience log %s: run %s iteration %d was read and fenced before this "
                        "attempt of episode %r finished; dropping its file (the log keeps the "
                        "attempt that was read)",
                        self.root,
                        run_id,
                        iteration,
                        task_id,
                    )
                    raise EpisodeFenced(
                        f"run {run_id!r} iteration {iteration} is fenced; episode {task_id!r} "
                        "was not written"
                    )
                replace_durably(tmp, final)  # atomic: the old attempt or the new one, never a mix
        finally:
            tmp.unlink(missing_ok=True)
        return final

    # -- fences ------------------------------------------------------------------------------

    def _fence_path(self, run_id: str, iteration: int) -> Path:
        _check_run_id(run_id)
        return self.root / self.FENCES / f"run={run_id}" / f"iteration={iteration}.fenced"

    @contextlib.contextmanager
    def _iteration_lock(self, run_id: str, iteration: int, *, exclusive: bool) -> Iterator[None]:
        path = self._fence_path(run_id, iteration).with_suffix(".lock")
        make_dirs(path.parent)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)  # releases the lock

    def is_fenced(self, run_id: str, iteration: int) -> bool:
        return self._fence_path(run_id, iteration).exists()

    def fence(self, run_id: str, iteration: int) -> None:
        """Close the iteration to writers: call when it is complete, before reading it for
        training. Waits for writers that are renaming right now."""
        path = self._fence_path(run_id, iteration)
        with self._iteration_lock(run_id, iteration, exclusive=True):
            if path.exists():
                return
            tmp = path.with_suffix(f".{uuid.uuid4().hex}.tmp")
            with tmp.open("w") as f:
                f.write(f"fenced at {now_utc().isoformat()} by pid {os.getpid()}\n")
                f.flush()
                os.fsync(f.fileno())
            replace_durably(tmp, path)

    def unfence(self, run_id: str, iteration: int) -> None:
        """Open the iteration to writers again (a collection that has episodes left to play)."""
        path = self._fence_path(run_id, iteration)
        if not path.exists():
            return
        with self._iteration_lock(run_id, iteration, exclusive=True):
            path.unlink(missing_ok=True)

    # -- reading -----------------------------------------------------------------------------

    def dataset(self) -> ds.Dataset:
        """The whole log as one ``pyarrow.dataset`` (partition columns ``run``, ``iteration``).
        The schema is given, not inferred, so discovery opens no file (a torn one included) and
        files of older schema versions read with their newer columns null."""
        return ds.dataset(
            self.root, format="parquet", partitioning=PARTITIONING, schema=_DATASET_SCHEMA
        )

    def read(
        self,
        run_id: str | None = None,
        iteration: int | None = None,
        columns: Sequence[str] | None = None,
    ) -> pa.Table:
        """Rows of one run / iteration (default: all); ``columns`` reads only those (trajectories
        and prompts are most of a log's bytes). Unreadable files are quarantined, not fatal."""
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
        table = self._read_quarantining(self.dataset, expr, columns)
        self._check_versions(table)
        return table

    def finished_tasks(self, run_id: str, iteration: int) -> set[str]:
        """Task ids whose episode is on disk and readable (the resume set): reads one column.
        A file that cannot be read is quarantined, so its task is played again."""
        directory = self.partition(run_id, iteration)
        if not directory.exists() or not any(directory.glob("part-*.parquet")):
            return set()

        def partition_dataset() -> ds.Dataset:
            return ds.dataset(directory, format="parquet", schema=SCHEMA)

        table = self._read_quarantining(partition_dataset, None, ["task_id"])
        return set(table.column("task_id").to_pylist())

    def _read_quarantining(
        self,
        make_dataset: Callable[[], ds.Dataset],
        expr: ds.Expression | None,
        columns: Sequence[str] | None,
    ) -> pa.Table:
        """Read; when a file is unreadable, find every such file of the selection, move them to
        the quarantine and read again (the good files are only re-read on this rare path)."""
        while True:
            dataset = make_dataset()
            try:
                return dataset.to_table(filter=expr, columns=columns and list(columns))
            except (pa.ArrowException, OSError) as exc:
                bad = _unreadable_files(dataset, expr, columns)
                if not bad:
                    raise
                for path, reason in bad:
                    self._quarantine(Path(path), reason or str(exc))

    def _quarantine(self, path: Path, reason: str) -> Path:
        relative = path.resolve().relative_to(self.root.resolve())
        target = self.root / self.QUARANTINE / relative
        make_dirs(target.parent)
        if target.exists():
            target = target.with_name(f"{target.name}.{uuid.uuid4().hex[:8]}")
        replace_durably(path, target)
        logger.warning(
            "experience log %s: unreadable part file %s (%s) moved to %s; its episode is no "
            "longer in the log and will be played again by the next collection of that "
            "iteration",
            self.root,
            relative,
            _shorten(reason),
            target,
        )
        return target

    def _check_versions(self, table: pa.Table) -> None:
        versions = set(table.column("schema_version").to_pylist()) if table.num_rows else set()
        newer = {v for v in versions if v is None or v > SCHEMA_VERSION or v < 1}
        if newer:
            raise ValueError(
                f"experience log {self.root} holds schema versions {sorted(versions, key=str)}; "
                f"this code reads 1..{SCHEMA_VERSION}: upgrade retro_ray to read it"
            )


_DATASET_SCHEMA = pa.schema([*SCHEMA, *PARTITIONING.schema])


def _unreadable_files(
    dataset: ds.Dataset, expr: ds.Expression | None, columns: Sequence[str] | None
) -> list[tuple[str, str]]:
    """(path, error) of every file of the selection that cannot be read on its own."""
    wanted = None if columns is None else [c for c in columns if c not in PARTITIONING.schema.names]
    bad = []
    for fragment in dataset.get_fragments(filter=expr):
        try:
            parquet = pq.ParquetFile(fragment.path)
            names = parquet.schema_arrow.names
            parquet.read(columns=None if wanted is None else [c for c in wanted if c in names])
        except (pa.ArrowException, OSError) as exc:
            bad.append((fragment.path, str(exc)))
    return bad


def _shorten(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


RUN_ID_RULE = r"[A-Za-z0-9][A-Za-z0-9_.@-]*"
"""A run id, matched in full: the config's ``run.name`` rule (``NAME_RULE``) plus ``@``, so a
partition may be named after a model version (``gate-retro@3``). Nothing that hive partitioning
decodes or splits (``%``, ``=``, ``/``), no leading ``.`` or ``_`` (hidden from every reader), no
whitespace."""

_RUN_ID = re.compile(RUN_ID_RULE)


def _check_run_id(run_id: str) -> None:
    if not isinstance(run_id, str) or _RUN_ID.fullmatch(run_id) is None:
        raise ValueError(f"run id {run_id!r} must match {RUN_ID_RULE} in full")
