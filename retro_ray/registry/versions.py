"""The registry's version directories, ``<root>/versions/<N>/``: a version's metadata
(``AdapterVersion``, its ``metadata.json``), the numbering of the next one, and storing a
validated adapter as a version that appears whole or not at all."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from retro_ray.durable import fsync_tree, replace_durably
from retro_ray.registry.validation import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    AdapterInfo,
    file_sha256,
)

logger = logging.getLogger(__name__)


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


def version_dir(root: Path, version: int) -> Path:
    return root / "versions" / str(version)


def next_version(root: Path, index: dict[str, Any]) -> tuple[int, list[int]]:
    """The next version number, past ``next_version`` and past every version directory on
    disk, and the directories the index never counted. A publish that crashed (or met a
    full disk) after its rename but before the index write left such a directory: its
    number is never reused (the rename would hit a non-empty directory, and engines cache
    adapters by name). The leftover stays a complete, verifiable version no alias points to."""
    counted = int(index["next_version"])
    on_disk = [int(p.name) for p in (root / "versions").iterdir() if p.name.isdigit()]
    skipped = sorted(v for v in on_disk if v >= counted)
    if skipped:
        logger.warning(
            "registry %s: version directories %s were never indexed (an interrupted "
            "publish); numbering continues after them",
            root,
            skipped,
        )
    return max([counted, *(v + 1 for v in skipped)]), skipped


def store_version(
    root: Path,
    src: Path,
    version: int,
    name: str,
    info: AdapterInfo,
    step: int,
    eval_score: float | None,
    config_hash: str,
    base_model_hash: str,
) -> AdapterVersion:
    """Copy and hash the files into a staging directory, fsync it, and rename it into place
    durably: the version directory appears whole or not at all, and the staging directory
    never outlives a failure (a full disk, a bad read)."""
    staging = Path(tempfile.mkdtemp(dir=root / "versions", prefix=f".{version}-"))
    try:
        files = {}
        for file_name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
            shutil.copyfile(src / file_name, staging / file_name)
            files[file_name] = file_sha256(staging / file_name)
        meta = AdapterVersion(
            version=version,
            name=name,
            step=step,
            eval_score=eval_score,
            base_model_hash=base_model_hash,
            config_hash=config_hash,
            rank=info.rank,
            target_modules=info.target_modules,
            created_at=time.time(),
            files=files,
        )
        (staging / "metadata.json").write_text(json.dumps(asdict(meta), indent=2))
        fsync_tree(staging)
        replace_durably(staging, version_dir(root, version))
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already after the rename
    return meta


def remove_stale_staging(root: Path) -> None:
    """Staging directories of publishes killed before their cleanup ran (call it under the
    lock, so that no publish is in progress: every one left is stale)."""
    for stale in (root / "versions").glob(".*"):
        if stale.is_dir():
            logger.warning("registry %s: removing stale staging %s", root, stale.name)
            shutil.rmtree(stale, ignore_errors=True)
