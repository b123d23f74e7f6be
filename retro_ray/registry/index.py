"""The registry's index, ``<root>/registry.json``, and its lock: the aliases and their history,
the pending promotions, the revision the serving controller watches, and the rules for moving
an alias. ``AdapterRegistry`` (``retro_ray.registry.store``) does every change under ``locked``."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from retro_ray.durable import replace_durably

FORMAT = 1
TRAIN_ALIAS = "train"
"""The learner's latest adapter: collection samples from it."""
PROD_ALIAS = "prod"
"""The promoted adapter: what users get (the gate or an operator moves it)."""
ALIASES = (TRAIN_ALIAS, PROD_ALIAS)


def new_index(
    name: str, run: str | None, base_model_hash: str, base_config_sha256: str
) -> dict[str, Any]:
    """The index of a registry just created: no version, no alias."""
    return {
        "format": FORMAT,
        "name": name,
        "run": run,
        "base_model_hash": base_model_hash,
        "base_config_sha256": base_config_sha256,
        "revision": 0,
        "next_version": 1,
        "aliases": {},
        "alias_history": {},
    }


def index_path(root: Path) -> Path:
    return root / "registry.json"


def read_index(root: Path) -> dict[str, Any]:
    index = json.loads(index_path(root).read_text())
    if index.get("format") != FORMAT:
        raise ValueError(f"registry {root} has unknown format {index.get('format')!r}")
    return index


def write_index(root: Path, index: dict[str, Any]) -> None:
    """Replace ``registry.json`` atomically and durably: readers see the old index or the
    new one, and after a crash the disk holds one of them whole (the version directories it
    names were fsynced before)."""
    tmp = index_path(root).with_suffix(".json.tmp")
    with tmp.open("w") as f:
        f.write(json.dumps(index, indent=2))
        f.flush()
        os.fsync(f.fileno())
    replace_durably(tmp, index_path(root))


@contextlib.contextmanager
def locked(root: Path) -> Iterator[None]:
    """``<root>/registry.lock`` held (fcntl): one writer at a time, across processes."""
    with (root / "registry.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def move_alias(index: dict[str, Any], alias: str, version: int) -> None:
    """Point ``alias`` at ``version``, keeping its previous target in the alias history."""
    previous = index["aliases"].get(alias)
    if previous is not None and previous != version:
        index["alias_history"].setdefault(alias, []).append(previous)
    index["aliases"][alias] = version
    index["revision"] += 1


def rewind_alias(index: dict[str, Any], alias: str, version: int) -> None:
    """Point ``alias`` back at ``version`` (a rollback), without adding to its history."""
    history = index["alias_history"].setdefault(alias, [])
    if version in history:  # forget the target's entry and all that came after
        del history[len(history) - 1 - history[::-1].index(version) :]
    index["aliases"][alias] = version
    index["revision"] += 1


def check_alias(alias: str) -> None:
    if alias not in ALIASES:
        raise ValueError(f"unknown alias {alias!r}; expected one of {ALIASES}")


def required_text(value: str, what: str) -> str:
    """Who approved and why: non-empty, one line, at most 500 characters."""
    text = (value or "").strip()
    if not text or "\n" in text or len(text) > 500:
        raise ValueError(f"{what} must be one non-empty line of at most 500 characters: {value!r}")
    return text
