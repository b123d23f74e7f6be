"""The chaos run, small: ``benchmarks.chaos`` on a local multi-node Ray cluster (a head and two
worker nodes) kills one of each kind (a rollout worker, a whole worker node, a learner rank, a
Serve replica, the driver) during a ``retro-ray train`` and audits what the run left on disk.
Also the two fixes the chaos run needed: the driver's control actors (the learner's batch queue,
the Serve app's controller) stay on the driver's node, and the rollout pool counts and reports
each request that failed for good."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from benchmarks.chaos_audit import required_keys
from benchmarks.chaos_faults import FAULT_KINDS, fault_schedule, learner_ranks
from tests.support.ports import free_port

REPO = Path(__file__).resolve().parent.parent


def test_required_keys_follow_the_branching_rule() -> None:
    # main chain: trial -> (won, failed on bad input); 3 trials, m = 2
    assert required_keys({0: (True, False)}, 3, 2) == {(0, 0)}
    assert required_keys({0: (False, False), 1: (True, False)}, 3, 2) == {
        (0, 0),
        (1, 0),
        (1, 1),
    }
    lost_twice = {0: (False, False), 1: (False, False), 2: (False, False)}
    assert required_keys(lost_twice, 3, 2) == {(0, 0), (1, 0), (1, 1), (2, 0), (2, 1)}
    assert required_keys({0: (False, True)}, 3, 2) == {(0, 0)}  # stopped on a rejected request
    assert required_keys({}, 3, 2) == {(0, 0)}  # a lost episode still owes its first trial


def test_fault_schedule_takes_every_kind_once_per_round() -> None:
    import random

    schedule = fault_schedule(list(FAULT_KINDS), 12, random.Random(0))
    assert len(schedule) == 12
    assert sorted(schedule[:5]) == sorted(FAULT_KINDS) == sorted(schedule[5:10])
    assert schedule == fault_schedule(list(FAULT_KINDS), 12, random.Random(0))  # seeded


def test_learner_ranks_are_read_from_the_worker_group_lines() -> None:
    text = (
        "\x1b[36m(RayTrainWorker pid=101)\x1b[0m Setting up process group for: env:// "
        "[rank=0, world_size=2]\n"
        "(RayTrainWorker pid=102, ip=10.0.0.2) Setting up process group for: env:// "
        "[rank=1, world_size=2]\n"
        "(TrainController pid=99) - (ip=10.0.0.3, pid=103) world_rank=2, local_rank=0\n"
    )
    assert learner_ranks(text) == {101: 0, 102: 1, 103: 2}


def test_evaluate_run_of_a_run_with_a_scripted_actor(tmp_path: Path) -> None:
    """``evaluate_run`` of a training run whose actor is the scripted (rule-based) one loads only
    the retrospective model and the run's adapter (the chaos run trains with that actor). Before,
    it refused the run as one that "used endpoint models": there is no actor model to load."""
    from retro_ray.config import load_config, to_dict
    from retro_ray.evaluation.play import evaluate_run
    from retro_ray.registry import AdapterRegistry
    from tests.support.tiny_model import build_tiny_model

    tiny = build_tiny_model(tmp_path / "model")
    run_dir = tmp_path / "runs" / "scripted"
    cfg = load_config(
        None,
        [
            "run.name=scripted",
            f"run.output_dir={run_dir.parent}",
            "env.name=lookup",
            "actor.policy=scripted",
            "trials.max_trials=2",
            "reflector.endpoint.max_tokens=8",
            f"serve.model_dir={tiny.model_dir}",
        ],
    )
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(to_dict(cfg)))
    registry = AdapterRegistry(run_dir / "registry", tiny.model_dir, run="scripted")
    registry.publish(tiny.adapters["a"], step=1)

    table = evaluate_run(
        run_dir, ["retroformer"], 1, ["env.num_tasks=3"], decodings=("greedy",), progress=False
    )
    row = table["agents"]["retroformer-greedy"]
    assert table["adapter"] == "retro@1" and row["tasks"] == 3
    assert len(row["success_by_trial"]) == 2


PLACEMENT_PROBE = textwrap.dedent(
    """
    import json, shutil, sys, tempfile
    from pathlib import Path
    import ray
    from ray.cluster_utils import Cluster
    from retro_ray.config import load_config
    from retro_ray.learner.queue import make_batch_queue
    from retro_ray.serve.launch import replica_settings, start_controller

    model_dir, registry = sys.argv[1], sys.argv[2]
    temp = tempfile.mkdtemp(prefix="rp-", dir="/tmp")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "temp_dir": temp})
    cluster.add_node(num_cpus=1, temp_dir=temp)
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        here = ray.get_runtime_context().get_node_id()
        actors = [make_batch_queue() for _ in range(6)]
        for i in range(6):
            cfg = load_config(None, [f"serve.app_name=probe{i}", f"registry.root={registry}",
                                     f"serve.model_dir={model_dir}"])
            actors.append(start_controller(replica_settings(cfg, Path(model_dir)), cfg.serve))
        where = ray.get([a.__ray_call__.remote(
            lambda self: ray.get_runtime_context().get_node_id()) for a in actors])
        print(json.dumps({"on_driver_node": sum(n == here for n in where), "actors": len(where),
                          "nodes": len(ray.nodes())}))
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
    """
)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_control_actors_run_on_the_driver_node(zoo_tiny, tmp_path: Path) -> None:
    """On a multi-node cluster the batch queue (no restarts: the cursor's source of truth) and the
    Serve app's controller land on the driver's node; before, Ray placed about half of them on
    worker nodes, where the loss of that node took the learner or the app's model lookup down
    while the driver lived on (found by the chaos run)."""
    done = subprocess.run(
        [sys.executable, "-c", PLACEMENT_PROBE, str(zoo_tiny.retrospective_dir), str(tmp_path)],
        cwd=REPO,
        env={**os.environ, "RAY_ADDRESS": ""},
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    assert probe["nodes"] == 2
    assert probe["on_driver_node"] == probe["actors"] == 12, probe


@pytest.mark.slow
def test_pool_counts_and_reports_requests_that_failed_for_good(
    ray_cluster, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A request that failed after the client's retries is counted (``failed_requests``, which
    ``retro-ray train`` writes to ``metrics.jsonl``) and said on stderr, once per request, and its
    episode is played again: nothing lost. Before, the pool only paused, and a chaos run could
    not tell a retried request from one that failed."""
    import itertools

    from retro_ray.config import load_config
    from retro_ray.envs.registry import make_env_from_config
    from retro_ray.rollout.experience import ExperienceLog
    from retro_ray.rollout.pool import RolloutPool
    from tests.support.openai_server import OpenAIServer

    counter = itertools.count()
    with OpenAIServer(lambda prompt: f"Try option {next(counter)}.", delay_s=0.25) as server:
        cfg = load_config(
            None,
            [
                "env.name=lookup",
                "env.split=train",
                "actor.policy=scripted",
                f"reflector.endpoint.base_url={server.base_url}",
                "reflector.endpoint.max_retries=0",
                "reflector.endpoint.timeout_s=2",
                "trials.max_trials=3",
                "rollout.num_workers=1",
                "rollout.episodes_per_worker=4",
                "rollout.num_cpus_per_worker=0.25",
                "rollout.retry_backoff_s=0.2",
                f"run.output_dir={tmp_path}",
            ],
        )
        tasks = make_env_from_config(cfg.env).tasks("train", 8, cfg.env.seed)
        outage = threading.Event()

        def outage_once(_summary: object) -> None:
            if not outage.is_set():  # connections refused for a second
                outage.set()
                server.stop()
                threading.Timer(1.0, server.start).start()

        root = tmp_path / "log"
        with RolloutPool(cfg, "reflexion", "failed", root, progress=False) as pool:
            report = pool.collect(tasks, iteration=0, on_episode=outage_once)
    said = capfd.readouterr().err.count("a request failed for good")
    assert report.failed_requests >= 1 and said == report.failed_requests
    rows = ExperienceLog(root).read("failed", 0).to_pylist()
    assert {r["task_id"] for r in rows} == {t.task_id for t in tasks}


def kill_when_starting(raylet_pid: int, timeout_s: float) -> tuple[int, set[int]] | None:
    """SIGKILL the first Ray Train worker of this Ray session seen while Ray Train launches its
    training function (process title ``ray::RayTrainWorker.run_train_fn``, ~0.25 s here): its
    pid and the pids of its group's other workers; None if none was seen in time."""
    import signal
    import time

    import psutil

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        workers = {}
        for child in psutil.Process(raylet_pid).children(recursive=True):
            try:
                workers[child.pid] = " ".join(child.cmdline())
            except psutil.Error:
                continue
        for pid, title in workers.items():
            if "RayTrainWorker.run_train_fn" in title:
                psutil.Process(pid).send_signal(signal.SIGKILL)
                return pid, {p for p, t in workers.items() if "RayTrainWorker" in t} - {pid}
        time.sleep(0.003)
    return None


def batch_of(seed: int, rows: int = 4):
    import torch

    from retro_ray.algo import ReflectionBatch

    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, 60, (5,), generator=g).tolist() for _ in range(rows)]
    reflections = [torch.randint(3, 60, (4,), generator=g).tolist() for _ in range(rows)]
    logprobs = [(-torch.rand(4, generator=g)).tolist() for _ in range(rows)]
    advantages = torch.randn(rows, generator=g)
    groups = [i // 2 for i in range(rows)]
    return ReflectionBatch.from_token_lists(
        prompts, reflections, advantages, groups, pad_id=0, old_logprobs=logprobs
    )


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_learner_survives_a_rank_killed_while_its_group_starts(ray_cluster, tmp_path) -> None:
    """A rank killed while Ray Train launches the training function ends ``fit()`` with a
    ``ControllerError`` Ray Train does not retry; the learner starts a new ``fit()`` from the
    checkpoint store, the killed group's other rank goes with the old ``fit()`` (it no longer holds
    CPUs the new group needs), and every batch is applied exactly once. Before, the driver died
    with ``LearnerFailed`` (the chaos run's learner-rank faults hit this window)."""
    import psutil
    import ray

    from retro_ray.config import LearnerConfig, LoRAConfig, PolicyLossConfig
    from retro_ray.learner.checkpoint import read_state
    from retro_ray.learner.distributed import DistributedLearner, job_placement_groups
    from tests.support.tiny_model import build_tiny_model

    model_dir = build_tiny_model(tmp_path / "model").model_dir
    config = LearnerConfig(
        lora=LoRAConfig(rank=4, alpha=8),
        loss=PolicyLossConfig(name="ppo_clip"),
        num_workers=2,
        cpus_per_worker=1.0,
        max_staleness=8,
        max_failures=2,
    )
    raylet = ray._private.worker._global_node.all_processes["raylet"][0].process.pid
    earlier = job_placement_groups()  # other tests' in this session, if any
    learner = DistributedLearner(model_dir, config, tmp_path / "train")
    with learner.start():
        killed = kill_when_starting(raylet, timeout_s=240)
        assert killed is not None, "no Ray Train worker was seen starting"
        victim, rest_of_group = killed
        for seed in range(3):
            learner.submit(batch_of(seed))
        learner.wait_applied(3, timeout_s=400)
        running = job_placement_groups() - earlier
        final = learner.finish(timeout_s=400)
        state = learner.state()
    assert learner.fit_restarts == 1
    assert victim not in {pid for _, pid, _ in state["workers"]}
    assert rest_of_group and not any(psutil.pid_exists(pid) for pid in rest_of_group)
    assert len(running) == 1, running  # the new group's: the killed group's was removed
    assert job_placement_groups() - earlier == set()
    assert state["violations"] == [] and state["committed"] == [0, 1, 2]
    assert read_state(final).cursor == read_state(final).steps == 3


@pytest.mark.slow
@pytest.mark.timeout(900)  # a 3-node cluster, one training run killed five times (~5 min here)
def test_chaos_run_loses_nothing(tmp_path: Path) -> None:
    """One fault of every kind during a small ``retro-ray train`` on a head and two worker nodes:
    every record the branching rule requires is in the log exactly once, every batch applied once
    (checkpoint cursor, the records' cursors, the registry's steps and weights), no request to the
    Serve app failed for good, and the driver only exited when it was killed."""
    out = tmp_path / "chaos"
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.chaos",
        "--out",
        str(out),
        "--faults",
        str(len(FAULT_KINDS)),
        "--interval",
        "4",
        "--iterations",
        "8",
        "--clean-runs",
        "0",
        "--port",
        str(free_port()),
        "--json",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=880)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    audit = result["audit"]
    assert result["faults_injected"] == len(FAULT_KINDS), result["faults"]
    assert result["faults_by_kind"] == dict.fromkeys(FAULT_KINDS, 1)
    assert audit["records"] == audit["required_records"] > 0
    assert result["lost_records"] == 0 and result["duplicate_records"] == 0, audit
    assert audit["unexpected_records"] == 0 and audit["quarantined_files"] == 0, audit
    assert result["failed_requests"] == 0, audit["failed_requests_by_source"]
    assert result["lost_batches"] == 0 and result["duplicate_batches"] == 0, audit
    assert audit["iterations_recorded_once"] and audit["record_cursors_increasing"], audit
    assert audit["registry_steps_consecutive"], audit
    assert audit["checkpoint_cursor"] == audit["batches_submitted"] > 0, audit
    assert audit["driver_incarnations"] == 2 and audit["unexpected_driver_exits"] == 0, audit
