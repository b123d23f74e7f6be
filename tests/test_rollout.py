"""The rollout pool on the session's Ray cluster: a worker killed mid-collection, an endpoint
outage, resume, and the log read back with Ray Data. The actor is the built-in environments'
scripted policy; the reflector is an LLM behind the loopback server, slowed down so that episodes
are still running when the faults hit."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from retro_ray.config import Config, load_config
from retro_ray.envs.registry import make_env_from_config
from retro_ray.rollout.episodes import EpisodeSummary
from retro_ray.rollout.experience import ExperienceLog
from retro_ray.rollout.pool import RolloutPool
from tests.support.openai_server import OpenAIServer

pytestmark = pytest.mark.slow


def pool_config(base_url: str, tmp_path: Path, *extra: str) -> Config:
    return load_config(
        None,
        [
            "env.name=lookup",
            "env.split=train",
            "actor.policy=scripted",
            f"reflector.endpoint.base_url={base_url}",
            "trials.max_trials=3",
            "train.group_size=2",
            "rollout.num_workers=2",
            "rollout.episodes_per_worker=4",
            "rollout.num_cpus_per_worker=0.25",
            "rollout.retry_backoff_s=0.2",
            f"run.output_dir={tmp_path}",
            *extra,
        ],
    )


def tasks_of(cfg: Config, n: int) -> list:
    return make_env_from_config(cfg.env).tasks(cfg.env.split, n, cfg.env.seed)


@pytest.fixture()
def reflector_server():
    counter = itertools.count()
    with OpenAIServer(lambda prompt: f"Try option {next(counter)}.", delay_s=0.25) as server:
        yield server


def assert_exactly_once(root: Path, run_id: str, tasks: list, cfg: Config) -> None:
    """Every (task, trial, sample) the branching rule calls for is in the log, exactly once."""
    table = ds.dataset(root, format="parquet", partitioning="hive").to_table()
    frame = table.to_pandas()
    assert set(frame["run"]) == {run_id}
    assert not frame.duplicated(["task_id", "trial", "sample"]).any()
    assert set(frame["task_id"]) == {t.task_id for t in tasks}
    m = cfg.train.group_size
    for _, rows in frame.groupby("task_id"):
        main = rows[rows["sample"] == 0].sort_values("trial")
        expected = {(0, 0)}
        for k, failed in enumerate(main.itertuples()):
            if not failed.won and k < cfg.trials.max_trials - 1:
                expected |= {(k + 1, i) for i in range(m)}
        assert set(zip(rows["trial"], rows["sample"], strict=True)) == expected


def test_killed_worker_loses_nothing_and_duplicates_nothing(
    ray_cluster, reflector_server, tmp_path: Path
) -> None:
    cfg = pool_config(reflector_server.base_url, tmp_path)
    tasks = tasks_of(cfg, 24)
    root = tmp_path / "log"
    killed = threading.Event()
    with RolloutPool(cfg, "train", "kill", root, progress=False) as pool:
        pool.wait_ready()
        victim = pool.handles[0]

        def kill_once(summary: EpisodeSummary) -> None:
            if not killed.is_set():  # after the first result: the victim has episodes running
                killed.set()
                ray_cluster.kill(victim, no_restart=False)

        report = pool.collect(tasks, iteration=0, on_episode=kill_once)
        assert killed.is_set()
        assert report.worker_crashes == 1 and report.retried >= 1
        assert len(report.summaries) == len(tasks)
        assert any(s.attempt > 0 for s in report.summaries)
        assert_exactly_once(root, "kill", tasks, cfg)

        # Resume: everything is in the log, so a second collection runs nothing.
        again = pool.collect(tasks, iteration=0)
        assert again.resumed == len(tasks) and not again.summaries

    # The same log through Ray Data (hive partitions become columns).
    import ray.data

    rows = ray.data.read_parquet(str(root)).select_columns(["run", "iteration", "task_id"])
    taken = rows.take_all()
    assert {r["task_id"] for r in taken} == {t.task_id for t in tasks}
    assert {(r["run"], str(r["iteration"])) for r in taken} == {("kill", "0")}


def test_endpoint_outage_pauses_and_resumes(ray_cluster, reflector_server, tmp_path: Path) -> None:
    cfg = pool_config(
        reflector_server.base_url,
        tmp_path,
        "reflector.endpoint.max_retries=0",
        "reflector.endpoint.timeout_s=2",
    )
    tasks = tasks_of(cfg, 12)
    root = tmp_path / "log"

    def outage_once(summary: EpisodeSummary) -> None:
        if not outage.is_set():  # after the first result: connections refused for a second
            outage.set()
            reflector_server.stop()
            threading.Timer(1.0, reflector_server.start).start()

    outage = threading.Event()
    with RolloutPool(cfg, "reflexion", "outage", root, progress=False) as pool:
        report = pool.collect(tasks, iteration=0, on_episode=outage_once)
    assert report.outage_pauses >= 1 and report.retried >= 1
    assert len(report.summaries) == len(tasks) and report.worker_crashes == 0
    frame = ExperienceLog(root).read("outage", 0).to_pandas()
    assert not frame.duplicated(["task_id", "trial", "sample"]).any()
    assert set(frame["task_id"]) == {t.task_id for t in tasks}


def test_unreadable_episode_is_played_again_and_the_iteration_fenced(
    ray_cluster, reflector_server, tmp_path: Path
) -> None:
    """A torn part file is quarantined and its episode replayed by the next collection; a finished
    collection fences its iteration, so a late attempt cannot change what the driver reads."""
    cfg = pool_config(reflector_server.base_url, tmp_path, "rollout.num_workers=1")
    tasks = tasks_of(cfg, 6)
    root = tmp_path / "log"
    log = ExperienceLog(root)
    with RolloutPool(cfg, "train", "torn", root, progress=False) as pool:
        pool.collect(tasks, iteration=0)
        assert log.is_fenced("torn", 0)
        victim = sorted((root / "run=torn" / "iteration=0").glob("part-*.parquet"))[0]
        victim.write_bytes(victim.read_bytes()[:100])
        report = pool.collect(tasks, iteration=0)
        assert report.resumed == len(tasks) - 1 and len(report.summaries) == 1
        assert (root / "_quarantine" / "run=torn" / "iteration=0" / victim.name).is_file()
        assert log.is_fenced("torn", 0)
        assert_exactly_once(root, "torn", tasks, cfg)
