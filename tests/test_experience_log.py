"""The Parquet experience log and the episode runner, without Ray: schema, atomic and idempotent
episode files, readers (pyarrow.dataset, pandas), and the rows of each collection mode."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from pathlib import Path

import pandas as pd
import pyarrow.dataset as ds
import pytest

from retro_ray.config import Config, load_config
from retro_ray.envs.registry import make_env_from_config
from retro_ray.llm.openai_client import OpenAIClient
from retro_ray.rollout.episodes import EpisodeRunner, EpisodeSpec
from retro_ray.rollout.experience import (
    SCHEMA,
    SCHEMA_VERSION,
    EpisodeFenced,
    ExperienceLog,
    ExperienceRow,
    episode_file_name,
)
from tests.support.openai_server import OpenAIServer


def row(task_id: str, trial: int, sample: int = 0, **extra: object) -> ExperienceRow:
    fields = {"split": "train", "env": "lookup", "mode": "train", "won": False, "return_after": 0.0}
    fields.update(task_id=task_id, trial=trial, sample=sample, **extra)
    return ExperienceRow(**fields)  # type: ignore[arg-type]


def test_episode_files_are_atomic_idempotent_and_readable(tmp_path: Path) -> None:
    log = ExperienceLog(tmp_path)
    first = log.write_episode("r1", 0, "t1", [row("t1", 0), row("t1", 1, 0), row("t1", 1, 1)])
    log.write_episode("r1", 0, "t2", [row("t2", 0, reflection_token_ids=[3, 4])])
    # A retry of t1 (say its worker died after writing) replaces the file, never adds one.
    again = log.write_episode("r1", 0, "t1", [row("t1", 0, won=True)])
    assert again == first and first.name == episode_file_name("r1", 0, "t1")
    assert first.parent == tmp_path / "run=r1" / "iteration=0"
    assert sorted(p.name for p in first.parent.iterdir()) == sorted(
        [episode_file_name("r1", 0, "t1"), episode_file_name("r1", 0, "t2")]
    )  # no temporary file left behind

    table = log.read("r1", 0)
    assert table.num_rows == 2 and set(table.column("schema_version").to_pylist()) == {
        SCHEMA_VERSION
    }
    assert (
        table.schema.field("reflection_token_ids").type == SCHEMA.field("reflection_token_ids").type
    )
    plain = ds.dataset(tmp_path, format="parquet", partitioning="hive").to_table()
    assert plain.num_rows == 2 and set(plain.column("run").to_pylist()) == {"r1"}
    frame = pd.read_parquet(tmp_path)
    assert sorted(frame["task_id"]) == ["t1", "t2"] and frame["won"].sum() == 1
    assert log.finished_tasks("r1", 0) == {"t1", "t2"} and log.finished_tasks("r1", 1) == set()

    with pytest.raises(ValueError, match="duplicate"):
        log.write_episode("r1", 0, "t3", [row("t3", 0), row("t3", 0)])
    with pytest.raises(ValueError, match="run id"):
        log.write_episode("a/b", 0, "t3", [row("t3", 0)])


def _config(tmp_path: Path, *extra: str) -> Config:
    return load_config(
        None,
        [
            "env.name=lookup",
            "env.split=train",
            "actor.policy=scripted",
            "trials.max_trials=3",
            "train.group_size=3",
            f"run.output_dir={tmp_path}",
            *extra,
        ],
    )


def _tasks(cfg: Config, n: int) -> list:
    return make_env_from_config(cfg.env).tasks(cfg.env.split, n, cfg.env.seed)


def test_evaluation_rows_follow_the_trial_loop(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    log = ExperienceLog(tmp_path / "log")
    runner = EpisodeRunner(cfg, "trajectory-oracle", "eval", log)
    tasks = _tasks(cfg, 12)

    async def run_all() -> None:
        for task in tasks:
            await runner.run(EpisodeSpec(task, iteration=0))

    asyncio.run(run_all())
    frame = log.read("eval", 0).to_pandas().sort_values(["task_id", "trial"])
    assert set(frame["task_id"]) == {t.task_id for t in tasks}
    assert (frame["sample"] == 0).all() and not frame.duplicated(["task_id", "trial"]).any()
    for _, rows in frame.groupby("task_id"):
        assert list(rows["trial"]) == list(range(len(rows)))  # stops at the first win
        assert not rows["won"].iloc[:-1].any()
        later = rows.iloc[1:]
        assert later["reflection"].notna().all() and pd.isna(rows["reflection"].iloc[0])
        assert (later["reward"] == later["return_after"] - later["return_before"]).all()
        assert (later["adapter_version"] == "trajectory_oracle").all()


def test_training_rows_branch_once_and_continue_with_branch_zero(tmp_path: Path) -> None:
    counter = itertools.count()
    with OpenAIServer(lambda prompt: f"Try option {next(counter)}.", models=("train",)) as server:
        cfg = _config(tmp_path, f"reflector.endpoint.base_url={server.base_url}")
        client = OpenAIClient(cfg.reflector.endpoint, request_token_ids=True)
        log = ExperienceLog(tmp_path / "log")
        runner = EpisodeRunner(cfg, "train", "run", log, reflector_client=client)
        tasks = _tasks(cfg, 8)

        async def run_all() -> None:
            await asyncio.gather(*(runner.run(EpisodeSpec(t, 2)) for t in tasks))

        asyncio.run(run_all())
        models = {r.body["model"] for r in server.requests if r.body}
        bodies = [r.body for r in server.requests if r.body]
    assert models == {"train"}  # the learner's latest adapter, at the training temperature
    assert all(b["temperature"] == 1.0 and b["top_p"] == 1.0 for b in bodies)
    frame = log.read("run", 2).to_pandas()
    assert not frame.duplicated(["task_id", "trial", "sample"]).any()
    m = cfg.train.group_size
    assert frame["sample"].max() == m - 1  # some trials failed and branched
    for _, rows in frame.groupby("task_id"):
        main = rows[rows["sample"] == 0].sort_values("trial")
        for k, failed in enumerate(main.itertuples()):
            branches = rows[rows["trial"] == k + 1].sort_values("sample")
            if failed.won or k == cfg.trials.max_trials - 1:
                assert branches.empty
                continue
            assert list(branches["sample"]) == list(range(m))  # m reflections, one trial each
            assert (branches["return_before"] == failed.return_after).all()
            assert (branches["reward"] == branches["return_after"] - failed.return_after).all()
            assert branches["reflection_token_ids"].map(len).gt(0).all()
            assert branches["reflection_logprobs"].map(len).gt(0).all()
            # The chain goes on with branch 0: its reflection is in the next trial's memory.
            branch0 = branches.iloc[0]
            assert list(branch0["memory"])[-1] == branch0["reflection"]


# -- crashes: durability, quarantine, fence ------------------------------------------------------


def test_episode_file_and_its_directory_are_fsynced(tmp_path: Path, monkeypatch) -> None:
    """The data is flushed before the rename, the partition directory after it: the task is in the
    resume set only if its file survives a power cut. (The real fsync runs; this only records.)"""
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    final = ExperienceLog(tmp_path).write_episode("r1", 0, "t1", [row("t1", 0)])
    staged = [p for p in synced if p.endswith(".tmp") and final.name in p]
    assert staged, f"the staged file was never fsynced: {synced}"
    assert str(final.parent) in synced  # the rename
    assert str(final.parent.parent) in synced and str(tmp_path) in synced  # new directories
    assert synced.index(staged[0]) < synced.index(str(final.parent))


def test_truncated_part_file_is_quarantined_and_its_task_replayed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = ExperienceLog(tmp_path)
    log.write_episode("r1", 0, "t1", [row("t1", 0), row("t1", 1)])
    torn = log.write_episode("r1", 0, "t2", [row("t2", 0, trajectory="x" * 5000)])
    log.write_episode("r1", 1, "t3", [row("t3", 0)])
    data = torn.read_bytes()
    torn.write_bytes(data[: len(data) // 2])  # a crash mid-write without the rename protocol

    with caplog.at_level(logging.WARNING, logger="retro_ray.rollout.experience"):
        table = log.read("r1")
    assert sorted(table.column("task_id").to_pylist()) == ["t1", "t1", "t3"]
    assert not torn.exists()
    moved = tmp_path / ExperienceLog.QUARANTINE / "run=r1" / "iteration=0" / torn.name
    assert moved.read_bytes() == data[: len(data) // 2]
    assert any("unreadable part file" in r.message for r in caplog.records)
    assert log.finished_tasks("r1", 0) == {"t1"}  # t2 is played again by the next collection
    # Every reader of the root skips the quarantine (and the other control directories).
    assert ds.dataset(tmp_path, format="parquet", partitioning="hive").to_table().num_rows == 3


def test_finished_tasks_quarantines_too(tmp_path: Path) -> None:
    log = ExperienceLog(tmp_path)
    log.write_episode("r1", 0, "t1", [row("t1", 0)])
    bad = log.write_episode("r1", 0, "t2", [row("t2", 0)])
    bad.write_bytes(b"PAR1 not a parquet file")
    assert log.finished_tasks("r1", 0) == {"t1"}
    assert not bad.exists() and log.read("r1", 0).num_rows == 1


def test_late_writer_after_the_fence_changes_nothing(tmp_path: Path) -> None:
    """A retried episode whose first attempt was still alive: once the driver has fenced and read
    the iteration, the late attempt's file is dropped."""
    log = ExperienceLog(tmp_path)
    log.write_episode("r1", 0, "t1", [row("t1", 0, won=True, attempt=1)])
    log.fence("r1", 0)
    read_before = log.read("r1", 0)
    with pytest.raises(EpisodeFenced):
        log.write_episode("r1", 0, "t1", [row("t1", 0), row("t1", 1)])  # attempt 0, late
    with pytest.raises(EpisodeFenced):
        log.write_episode("r1", 0, "t9", [row("t9", 0)])
    assert log.read("r1", 0).equals(read_before)
    assert log.finished_tasks("r1", 0) == {"t1"}
    assert not any((tmp_path / ExperienceLog.STAGING).iterdir())  # nothing left behind
    log.write_episode("r1", 1, "t1", [row("t1", 0)])  # other iterations are open
    log.unfence("r1", 0)  # a collection with work left reopens it
    log.write_episode("r1", 0, "t9", [row("t9", 0)])
    assert log.finished_tasks("r1", 0) == {"t1", "t9"}
