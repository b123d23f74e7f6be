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

This module holds ``AdapterRegistry``, the one writer of that format; ``index`` reads and writes
``registry.json`` (and moves aliases in it) under ``registry.lock``, ``versions`` stores and
numbers the version directories, and ``audit`` reads ``events.jsonl`` back.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retro_ray.durable import append_jsonl
from retro_ray.registry.audit import read_events
from retro_ray.registry.index import (
    ALIASES,
    PROD_ALIAS,
    TRAIN_ALIAS,
    check_alias,
    index_path,
    locked,
    move_alias,
    new_index,
    read_index,
    required_text,
    rewind_alias,
    write_index,
)
from retro_ray.registry.validation import (
    LLAMA_LORA_MODULES,
    AdapterRejected,
    BaseShapes,
    check_adapter_name,
    file_sha256,
    model_hash,
    validate_adapter,
)
from retro_ray.registry.versions import (
    AdapterVersion,
    next_version,
    remove_stale_staging,
    store_version,
    version_dir,
)

logger = logging.getLogger(__name__)


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
        with locked(self.root):
            config_sha = file_sha256(self.base_model_dir / "config.json")
            if index_path(self.root).exists():
                index = self._read_index()
                self.base_model_hash: str = index["base_model_hash"]
                if index["name"] != self.name:
                    raise ValueError(f"registry {self.root} holds {index['name']!r} adapters")
                if index["base_config_sha256"] != config_sha:
                    raise ValueError(f"registry {self.root} belongs to another base model")
                self._check_owner(index, run, shared)
            else:
                self.base_model_hash = model_hash(self.base_model_dir)
                self._write_index(new_index(self.name, run, self.base_model_hash, config_sha))
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
        return version_dir(self.root, version)

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
            check_alias(alias)
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
        with locked(self.root):
            index = self._read_index()
            remove_stale_staging(self.root)
            version, skipped = next_version(self.root, index)
            meta = store_version(
                self.root,
                src,
                version,
                self.version_name(version),
                info,
                step,
                eval_score,
                config_hash,
                self.base_model_hash,
            )
            index["next_version"] = version + 1
            if alias is not None:
                move_alias(index, alias, version)
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
        check_alias(alias)
        version = self.resolve(version)
        with locked(self.root):
            index = self._read_index()
            request = {"alias": alias, "reason": reason, "time": time.time()}
            index.setdefault("pending", {})[str(version)] = request
            self._write_index(index)
        self._event("pending", alias=alias, version=version, reason=reason)
        return version

    def approve(self, version: int | str, by: str, reason: str) -> int:
        """A person approves the pending promotion of ``version``: its alias moves, and who and
        why are recorded (an ``approve`` event, with the gate's reason as ``gate_reason``)."""
        by, reason = required_text(by, "by"), required_text(reason, "reason")
        version = self.resolve(version)
        with locked(self.root):
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
            move_alias(index, alias, version)
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
        check_alias(alias)
        who = {} if by is None else {"by": required_text(by, "by")}
        version = self.resolve(ref)
        with locked(self.root):
            index = self._read_index()
            previous = index["aliases"].get(alias)
            request = index.get("pending", {}).get(str(version))
            if request is not None and request["alias"] == alias:  # done by hand: not pending
                del index["pending"][str(version)]
            if event == "rollback" and previous is not None:
                rewind_alias(index, alias, version)
            else:
                move_alias(index, alias, version)
            self._write_index(index)
        self._event(event, alias=alias, version=version, previous=previous, reason=reason, **who)
        return version

    def _read_index(self) -> dict[str, Any]:
        return read_index(self.root)

    def _write_index(self, index: dict[str, Any]) -> None:
        write_index(self.root, index)

    def _event(self, event: str, **fields: Any) -> None:
        run = {} if self.run is None or "run" in fields else {"run": self.run}
        record = {"time": time.time(), "event": event, **fields, **run}
        with locked(self.root):  # fsynced; a torn last line of a crash is cut first, never glued to
            append_jsonl(self.root / "events.jsonl", record)
