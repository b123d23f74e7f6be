"""Durable writes: a learner checkpoint that is visible (and so acknowledged to the batch queue)
must be on disk whole, with the rename that made it visible. The real ``os.fsync`` runs; the test
only records which paths it was called on (through ``/proc/self/fd``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from retro_ray.config import LearnerConfig, LoRAConfig
from retro_ray.durable import make_dirs
from retro_ray.learner.checkpoint import ADAPTER_DIR, OPTIMIZER_FILE, CheckpointStore, LearnerState
from retro_ray.learner.policy import ReflectorPolicy
from tests.support.tiny_model import build_tiny_model


@pytest.fixture()
def fsynced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    paths: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        paths.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    return paths


def test_checkpoint_files_and_directories_are_fsynced(tmp_path: Path, fsynced: list[str]) -> None:
    model_dir = build_tiny_model(tmp_path / "model").model_dir
    policy = ReflectorPolicy(model_dir, LearnerConfig(lora=LoRAConfig(rank=4, alpha=8)), seed=0)
    root = tmp_path / "ckpt"
    final = CheckpointStore(root).write(policy, LearnerState(3, 0, 0, "hash"))
    written = [Path(p) for p in fsynced]
    inside = [p.relative_to(root).parts for p in written if p.is_relative_to(root) and p != root]
    staged = {Path(*parts[1:]) for parts in inside if parts[0].startswith(".tmp-")}
    for name in (f"{ADAPTER_DIR}/adapter_model.safetensors", OPTIMIZER_FILE, ".state.json.tmp"):
        assert Path(name) in staged, f"{name} not fsynced before the rename: {fsynced}"
    assert Path(ADAPTER_DIR) in staged  # the adapter directory's entries
    assert written[-1] == root and final.parent == root  # the rename into place, last
    assert (final / "state.json").is_file()


def test_make_dirs_fsyncs_each_new_parent(tmp_path: Path, fsynced: list[str]) -> None:
    make_dirs(tmp_path / "a" / "b" / "c")
    assert fsynced == [str(tmp_path), str(tmp_path / "a"), str(tmp_path / "a" / "b")]
    fsynced.clear()
    make_dirs(tmp_path / "a" / "b")  # exists: nothing to do
    assert fsynced == []
