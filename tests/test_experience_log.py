"""The Parquet experience log and the episode runner, without Ray: schema, atomic and idempotent
episode files, readers (pyarrow.dataset, pandas), and the rows of each collection mode."""

from __future__ import annotations

import asyncio
import itertools
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
