"""The adapter registry: versioned LoRA adapters on disk, aliases, and the audit log.

The learner writes it (``publish``), operators and the promotion gate move aliases (``promote``,
``rollback``), and the serving controller reads it and hot-swaps what it says. Nothing here
imports Ray: the registry is a directory any process can open.

On-disk format (``format: 1``)::

    <root>/registry.json           name, run (the owning run), base_model_hash, base_config_sha256,
                                   revision, next_version, aliases {"train": 3, "prod": 2},
                                   alias_history {"prod": [1, 2]}
    <root>/versions/<N>/           adapter_config.json, adapter_model.safetensors, metadata.json
    <root>/events.jsonl            publish / promote / rollback / pending / approve / gate / reject
                                   events, one JSON a line (``registry_history`` reads the alias
                                   changes); ``registry.json`` also holds ``pending`` promotions
    <root>/registry.lock           fcntl lock: one writer at a time, across processes

``metadata.json`` holds ``version``, ``name`` (``retro@N``: the immutable name it is served
under, never reused, because engines cache adapters by name), ``step``, ``eval_score``,
``base_model_hash``, ``config_hash``, ``rank``, ``target_modules``, ``created_at`` and the
sha256 of each file (checked again before a replica loads it). A version directory appears by an
atomic rename only after it was validated, copied in full and fsynced; ``registry.json`` is
replaced atomically and durably after it, and its ``revision`` grows with every alias change,
which is what the controller watches. A publish interrupted between the two leaves a complete
version the index does not count; version numbers always continue past every directory on disk.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from retro_ray.durable import append_jsonl, fsync_tree, replace_durably
from retro_ray.registry.validation import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    LLAMA_LORA_MODULES,
    AdapterInfo,
    AdapterRejected,
    BaseShapes,
    check_adapter_name,
    file_sha256,
    model_hash,
    validate_adapter,
)

logger = logging.getLogger(__name__)

FORMAT = 1
TRAIN_ALIAS = "train"
"""The learner's latest adapter: collection samples from it."""
PROD_ALIAS = "prod"
"""The promoted adapter: what users get (the gate or an operator moves it)."""
ALIASES = (TRAIN_ALIAS, PROD_ALIAS)
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


@dataclass(frozen=True)
class AdapterVersion:
    """The metadata of one published version (``metadata.json``)."""

    version: int
    name: str  # "retro@3": the immutable serving name
    step: int
    eval_score: float | None
    base_model_hash: str
    config_hash: str
    rank: int
    target_modules: tuple[str, ...]
    created_at: float
    files: dict[str, str] = field(default_factory=dict)  # file name -> sha256

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AdapterVersion:
        return cls(**{**data, "target_modules": tuple(data["target_modules"])})


@dataclass(frozen=True)
class PendingPromotion:
    """A promotion the gate passed that waits for a person (``registry.require_approval``)."""

    version: int
    alias: str
    reason: str  # the gate's
    time: float


@dataclass(frozen=True)
class RegistryState:
    """The alias table the serving side reconciles to, and its revision."""

    revision: int
    aliases: dict[str, int]
    versions: tuple[int, ...]


class RegistryOwnedByAnotherRun(ValueError):
    """A run opened a registry another run owns: it would serve, gate and evaluate the other
    run's adapters (and its staleness would count the other run's versions)."""


class AdapterRegistry:
    """Versioned LoRA adapters of one base model under ``root``.

    ``base_model_dir`` gives the shapes every adapter is checked against, and its hash, which is
    recorded at creation (the full hash once; reopening compares only ``config.json``, so a CLI
    call does not re-read gigabytes of weights): opening it with another architecture is an
    error, and a publish claiming another base model's hash is rejected.

    ``run`` names the run that opens it: the first run to open a registry owns it (``run`` in
    ``registry.json``), and another run opening it raises ``RegistryOwnedByAnotherRun`` unless
    ``shared`` (``registry.shared``: runs that mean to share one). Processes that only follow a
    registry the run's driver already opened (replicas, the learner) pass no ``run``."""

    def __init__(
        self,
        root: str | Path,
        base_model_dir: str | Path,
        name: str = "retro",
        max_lora_rank: int = 16,
        supported_modules: frozenset[str] = LLAMA_LORA_MODULES,
        *,
        run: str | None = None,
        shared: bool = False,
    ) -> None:
        self.root = Path(root)
        self.name = check_adapter_name(name)
        self.base_model_dir = Path(base_model_dir)
        self.max_lora_rank = max_lora_rank
        self.supported_modules = supported_modules
        self._shapes = BaseShapes.from_model_dir(self.base_model_dir)
        (self.root / "versions").mkdir(parents=True, exist_ok=True)
        with self._locked():
            config_sha = file_sha256(self.base_model_dir / "config.json")
            if self._index_path.exists():
                index = self._read_index()
                self.base_model_hash: str = index["base_model_hash"]
                if index["name"] != self.name:
                    raise ValueError(f"registry {self.root} holds {index['name']!r} adapters")
                if index["base_config_sha256"] != config_sha:
                    raise ValueError(f"registry {self.root} belongs to another base model")
                self._check_owner(index, run, shared)
            else:
                self.base_model_hash = model_hash(self.base_model_dir)
                self._write_index(
                    {
                        "format": FORMAT,
                        "name": self.name,
                        "run": run,
                        "base_model_hash": self.base_model_hash,
                        "base_config_sha256": config_sha,
                        "revision": 0,
                        "next_version": 1,
                        "aliases": {},
                        "alias_history": {},
                    }
                )
        self.owner: str | None = self._read_index().get("run")
        self.run = run

    def _check_owner(self, index: dict[str, Any], run: str | None, shared: bool) -> None:
        """Refuse another run's registry (unless ``shared``); a registry written before owners
        were recorded becomes the opening run's."""
        owner = index.get("run")
        if run is None or owner == run:
            return
        if owner is None:
            index["run"] = run
            self._write_index(index)
            return
        if not shared:
            raise RegistryOwnedByAnotherRun(
                f"registry {self.root} belongs to run {owner!r}, not to run {run!r}: run {run!r} "
                f"would serve, gate and evaluate {owner!r}'s adapters. Give run {run!r} its own "
                "registry (leave registry.root unset: it defaults to <run dir>/registry, or set "
                "registry.root to a new directory), or set registry.shared=true if the runs are "
                "meant to share it"
            )

    # -- reading ------------------------------------------------------------------------------

    def version_name(self, version: int) -> str:
        return f"{self.name}@{version}"

    def path(self, version: int) -> Path:
        return self.root / "versions" / str(version)

    def state(self) -> RegistryState:
        index = self._read_index()
        return RegistryState(index["revision"], dict(index["aliases"]), tuple(self.versions()))

    def versions(self) -> list[int]:
        found = (p for p in (self.root / "versions").iterdir() if p.name.isdigit())
        return sorted(int(p.name) for p in found if (p / "metadata.json").is_file())

    def get(self, version: int) -> AdapterVersion:
        meta = self.path(version) / "metadata.json"
        if not meta.is_file():
            raise KeyError(f"no version {version} in registry {self.root}")
        return AdapterVersion.from_json(json.loads(meta.read_text()))

    def resolve(self, ref: str | int) -> int:
        """A version number from an alias (``prod``), a name (``retro@3``) or a number."""
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
            version = int(ref)
        elif ref in ALIASES:
            aliases = self._read_index()["aliases"]
            if ref not in aliases:
                raise KeyError(f"alias {ref!r} is not set yet")
            return int(aliases[ref])
        elif ref.startswith(f"{self.name}@") and ref.split("@", 1)[1].isdigit():
            version = int(ref.split("@", 1)[1])
        else:
            raise KeyError(f"unknown adapter reference {ref!r}")
        self.get(version)
        return version

    def verify(self, version: int) -> Path:
        """The version's directory after checking each file against its recorded sha256 (a file
        changed or damaged since publish is never loaded)."""
        meta = self.get(version)
        root = self.path(version)
        for name, digest in meta.files.items():
            if file_sha256(root / name) != digest:
                raise AdapterRejected(f"{meta.name}: {name} changed since publish")
        return root

    def events(self) -> list[dict[str, Any]]:
        return read_events(self.root)

    def pending(self) -> list[PendingPromotion]:
        """Promotions waiting for approval, oldest version first."""
        requests = self._read_index().get("pending", {})
        return [
            PendingPromotion(int(v), r["alias"], r["reason"], r["time"])
            for v, r in sorted(requests.items(), key=lambda item: int(item[0]))
        ]

    # -- writing ------------------------------------------------------------------------------

    def publish(
        self,
        adapter_dir: str | Path,
        *,
        step: int = 0,
        eval_score: float | None = None,
        config_hash: str = "",
        base_model_hash: str | None = None,
        alias: str | None = TRAIN_ALIAS,
    ) -> AdapterVersion:
        """Validate and store a new version (and point ``alias`` at it). ``base_model_hash`` is
        what the writer trained on; when given it must equal the registry's. Raises
        ``AdapterRejected`` (logged as a ``reject`` event) and leaves the registry unchanged.
        Any other failure (a full disk, a crash) leaves no staging directory behind and at most
        a complete version directory the index does not name yet; the next publish numbers past
        it (``skipped`` in its event)."""
        if alias is not None:
            _check_alias(alias)
        src = Path(adapter_dir)
        try:
            if base_model_hash is not None and base_model_hash != self.base_model_hash:
                raise AdapterRejected(
                    f"base model hash {base_model_hash[:12]}... does not match the registry's "
                    f"{self.base_model_hash[:12]}...: trained on another base model"
                )
            info = validate_adapter(src, self._shapes, self.max_lora_rank, self.supported_modules)
        except AdapterRejected as exc:
            self._event("reject", source=str(src), reason=str(exc))
            logger.warning("adapter %s rejected: %s", src, exc)
            raise
        with self._locked():
            index = self._read_index()
            self._remove_stale_staging()
            version, skipped = self._next_version(index)
            meta = self._store_version(src, version, info, step, eval_score, config_hash)
            index["next_version"] = version + 1
            if alias is not None:
                self._move_alias(index, alias, version)
            self._write_index(index)
        extra = {"skipped": skipped} if skipped else {}
        self._event("publish", version=version, name=meta.name, step=step, alias=alias, **extra)
        return meta

    def promote(
        self,
        version: int | str,
        alias: str = PROD_ALIAS,
        reason: str = "",
        by: str | None = None,
    ) -> int:
        """Point ``alias`` at ``version`` (the gate calls this after the candidate proved not
        worse); the previous target is kept in the alias history for rollback. ``by``: who,
        when a person did it."""
        return self._set_alias(alias, version, "promote", reason, by)

    def rollback(
        self,
        alias: str = PROD_ALIAS,
        to: int | str | None = None,
        reason: str = "",
        by: str | None = None,
    ) -> int:
        """Point ``alias`` back at ``to`` (any earlier version), or at its previous target."""
        if to is None:
            history = self._read_index()["alias_history"].get(alias, [])
            if not history:
                raise ValueError(f"alias {alias!r} has no earlier version to roll back to")
            to = history[-1]
        return self._set_alias(alias, to, "rollback", reason, by)

    def request_promotion(
        self, version: int | str, alias: str = PROD_ALIAS, reason: str = ""
    ) -> int:
        """Approval mode: ``version`` passed the gate for ``alias`` and waits for a person
        (``approve``); the alias does not move. Recorded in ``registry.json`` (``pending``) and
        as a ``pending`` event."""
        _check_alias(alias)
        version = self.resolve(version)
        with self._locked():
            index = self._read_index()
            request = {"alias": alias, "reason": reason, "time": time.time()}
            index.setdefault("pending", {})[str(version)] = request
            self._write_index(index)
        self._event("pending", alias=alias, version=version, reason=reason)
        return version

    def approve(self, version: int | str, by: str, reason: str) -> int:
        """A person approves the pending promotion of ``version``: its alias moves, and who and
        why are recorded (an ``approve`` event, with the gate's reason as ``gate_reason``)."""
        by, reason = _required_text(by, "by"), _required_text(reason, "reason")
        version = self.resolve(version)
        with self._locked():
            index = self._read_index()
            request = index.get("pending", {}).pop(str(version), None)
            if request is None:
                waiting = [p.version for p in self.pending()] or "none"
                raise ValueError(
                    f"version {version} has no pending promotion (pending: {waiting}); only a "
                    "version the gate passed in approval mode can be approved (retro-ray "
                    "registry promote moves an alias directly)"
                )
            alias = request["alias"]
            previous = index["aliases"].get(alias)
            self._move_alias(index, alias, version)
            self._write_index(index)
        self._event(
            "approve",
            alias=alias,
            version=version,
            previous=previous,
            by=by,
            reason=reason,
            gate_reason=request["reason"],
        )
        return version

    def record(self, event: str, **fields: Any) -> None:
        """Append an audit event (the gate logs its decisions here)."""
        self._event(event, **fields)

    # -- internals ----------------------------------------------------------------------------

    def _set_alias(
        self, alias: str, ref: int | str, event: str, reason: str, by: str | None = None
    ) -> int:
        _check_alias(alias)
        who = {} if by is None else {"by": _required_text(by, "by")}
        version = self.resolve(ref)
        with self._locked():
            index = self._read_index()
            previous = index["aliases"].get(alias)
            request = index.get("pending", {}).get(str(version))
            if request is not None and request["alias"] == alias:  # done by hand: not pending
                del index["pending"][str(version)]
            if event == "rollback" and previous is not None:
                history = index["alias_history"].setdefault(alias, [])
                if version in history:  # forget the target's entry and all that came after
                    del history[len(history) - 1 - history[::-1].index(version) :]
                index["aliases"][alias] = version
                index["revision"] += 1
            else:
                self._move_alias(index, alias, version)
            self._write_index(index)
        self._event(event, alias=alias, version=version, previous=previous, reason=reason, **who)
        return version

    def _next_version(self, index: dict[str, Any]) -> tuple[int, list[int]]:
        """The next version number, past ``next_version`` and past every version directory on
        disk, and the directories the index never counted. A publish that crashed (or met a
        full disk) after its rename but before the index write left such a directory: its
        number is never reused (the rename would hit a non-empty directory, and engines cache
        adapters by name). The leftover stays a complete, verifiable version no alias points to."""
        counted = int(index["next_version"])
        on_disk = [int(p.name) for p in (self.root / "versions").iterdir() if p.name.isdigit()]
        skipped = sorted(v for v in on_disk if v >= counted)
        if skipped:
            logger.warning(
                "registry %s: version directories %s were never indexed (an interrupted "
                "publish); numbering continues after them",
                self.root,
                skipped,
            )
        return max([counted, *(v + 1 for v in skipped)]), skipped

    def _store_version(
        self,
        src: Path,
        version: int,
        info: AdapterInfo,
        step: int,
        eval_score: float | None,
        config_hash: str,
    ) -> AdapterVersion:
        """Copy and hash the files into a staging directory, fsync it, and rename it into place
        durably: the version directory appears whole or not at all, and the staging directory
        never outlives a failure (a full disk, a bad read)."""
        staging = Path(tempfile.mkdtemp(dir=self.root / "versions", prefix=f".{version}-"))
        try:
            files = {}
            for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
                shutil.copyfile(src / name, staging / name)
                files[name] = file_sha256(staging / name)
            meta = AdapterVersion(
                version=version,
                name=self.version_name(version),
                step=step,
                eval_score=eval_score,
                base_model_hash=self.base_model_hash,
                config_hash=config_hash,
                rank=info.rank,
                target_modules=info.target_modules,
                created_at=time.time(),
                files=files,
            )
            (staging / "metadata.json").write_text(json.dumps(asdict(meta), indent=2))
            fsync_tree(staging)
            replace_durably(staging, self.path(version))
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # gone already after the rename
        return meta

    def _remove_stale_staging(self) -> None:
        """Staging directories of publishes killed before their cleanup ran (called under the
        lock, so no publish is in progress: every one left is stale)."""
        for stale in (self.root / "versions").glob(".*"):
            if stale.is_dir():
                logger.warning("registry %s: removing stale staging %s", self.root, stale.name)
                shutil.rmtree(stale, ignore_errors=True)

    @staticmethod
    def _move_alias(index: dict[str, Any], alias: str, version: int) -> None:
        previous = index["aliases"].get(alias)
        if previous is not None and previous != version:
            index["alias_history"].setdefault(alias, []).append(previous)
        index["aliases"][alias] = version
        index["revision"] += 1

    @property
    def _index_path(self) -> Path:
        return self.root / "registry.json"

    def _read_index(self) -> dict[str, Any]:
        index = json.loads(self._index_path.read_text())
        if index.get("format") != FORMAT:
            raise ValueError(f"registry {self.root} has unknown format {index.get('format')!r}")
        return index

    def _write_index(self, index: dict[str, Any]) -> None:
        """Replace ``registry.json`` atomically and durably: readers see the old index or the
        new one, and after a crash the disk holds one of them whole (the version directories it
        names were fsynced before)."""
        tmp = self._index_path.with_suffix(".json.tmp")
        with tmp.open("w") as f:
            f.write(json.dumps(index, indent=2))
            f.flush()
            os.fsync(f.fileno())
        replace_durably(tmp, self._index_path)

    def _event(self, event: str, **fields: Any) -> None:
        run = {} if self.run is None or "run" in fields else {"run": self.run}
        record = {"time": time.time(), "event": event, **fields, **run}
        with self._locked():  # fsynced; a torn last line of a crash is cut first, never glued to
            append_jsonl(self.root / "events.jsonl", record)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with (self.root / "registry.lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _check_alias(alias: str) -> None:
    if alias not in ALIASES:
        raise ValueError(f"unknown alias {alias!r}; expected one of {ALIASES}")


def _required_text(value: str, what: str) -> str:
    """Who approved and why: non-empty, one line, at most 500 characters."""
    text = (value or "").strip()
    if not text or "\n" in text or len(text) > 500:
        raise ValueError(f"{what} must be one non-empty line of at most 500 characters: {value!r}")
    return text
