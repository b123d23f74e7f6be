"""The chaos run: ``retro-ray train`` on a local multi-node Ray cluster while a seeded fault injector
kills its parts, then the proof, read from what the run left on disk, that nothing was lost or
counted twice.

The cluster is ``ray.cluster_utils.Cluster`` in this process: a head node and ``--worker-nodes``
worker nodes on this machine, each with its own raylet and logical CPUs, in a Ray temp directory
of their own (the Serve proxy on the head only: the nodes share one loopback address, and one
proxy per node would fight for the port). The run is the product's command, ``retro-ray train``,
in a process of its own that joins the cluster through ``RAY_ADDRESS``, with ``--config``
(``configs/train_tiny.yaml``: the tiny zoo, the torch backend behind Serve) and what a run on a
cluster that loses a process every few seconds sets (``CHAOS_OVERRIDES``: two learner ranks and
two replicas, restart budgets, the reflection-following scripted actor so that rewards, and so
the adapter, move); the clean runs use the same settings.

Every ``--interval`` seconds (jittered) the injector kills one of, in a seeded order that takes
every kind once per round:

- ``rollout_worker``: a ``RolloutWorker`` actor's process (SIGKILL);
- ``node``: a whole worker node (``Cluster.remove_node`` without grace), replaced by a new one;
- ``learner_rank``: a Ray Train worker (``RayTrainWorker``), rank 0 and another rank in turn;
- ``serve_replica``: a Serve replica's process of the run's app;
- ``driver``: the ``retro-ray train`` process itself, then the same command again with the same
  run directory (it resumes). A driver is killed only once its incarnation has made progress (an
  episode or an iteration record), so that the run always moves forward.

Processes are found with Ray's state API (``list_actors``: class name, pid, node). Then, after
the run (:func:`audit_run`):

- ``lost_records`` / ``duplicate_records``: every (task, trial, sample) the branching rule
  requires for each task of each iteration (the main chain, and after each failed main-chain
  trial but the last its ``m`` branches) is in the Parquet log exactly once, read with
  :class:`~retro_ray.rollout.experience.ExperienceLog`; rows the rule does not require are
  ``unexpected_records``;
- ``lost_batches`` / ``duplicate_batches``: the learner checkpoint's cursor equals the batches the
  iterations of ``metrics.jsonl`` submitted; the learner's per-batch cursors in the records are
  consecutive; the registry's versions cover steps 1..cursor, and versions of one step (a restarted
  learner publishes its checkpoint again) hold identical weights;
- ``failed_requests``: requests to the Serve app whose failure reached the caller: given up after
  the client's retries or refused without one (the rollout pool's ``request failed`` lines in every
  driver incarnation's output, episodes recorded as failed in the log, gate errors, drivers that
  exited on an endpoint error); ``retried_requests``: the client's logged retries (driver and Ray
  worker logs), requests that failed once and were then retried;
- ``heldout_success_chaos`` / ``heldout_success_clean``: both runs' trained adapters evaluated with
  :func:`retro_ray.evaluation.play.evaluate_run` on the same test tasks; the chaos run passes when
  it is within ``spread`` of the clean run with the same seeds, where ``spread`` is the larger of
  the range over ``--clean-runs`` clean runs with different ``run.seed`` and the half-width of the
  clean run's bootstrap ``ci95``;
- ``weights_vs_clean``: the learner steps whose adapter weights are bitwise those of the clean run
  with the same seeds (requests are seeded per task, trial and sample, and the learner checkpoints
  its whole state, so a run that loses and repeats nothing can match it step for step).

    python -m benchmarks.chaos --json                    # >= 20 faults of 5 kinds, 3 clean runs
    python -m benchmarks.chaos --faults 4 --clean-runs 0 --json   # the faults and audits only

The goal: ``lost_records`` 0, ``duplicate_records`` 0, ``failed_requests`` 0, at least 20 faults
of at least 4 kinds, held-out success within the spread (``goal_met``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

REPO = Path(__file__).resolve().parent.parent
FAULT_KINDS = ("rollout_worker", "node", "learner_rank", "serve_replica", "driver")
EXIT_ENDPOINT = 3  # retro-ray's exit code for an unreachable endpoint (retro_ray.cli)

CHAOS_OVERRIDES = (
    # The reflection-following scripted actor: with the tiny LLM actor every trial of lookup is
    # lost, every reward is 0 and the adapter never moves, which would make the weight checks and
    # the held-out comparison vacuous. The reflector stays the tiny model behind Serve.
    "actor.policy=scripted",
    "learner.num_workers=2",  # a rank 0 and a rank 1 to kill
    "learner.max_failures=1000",  # Ray Train restarts the worker group after every kill
    "rollout.num_workers=2",
    "rollout.max_restarts=1000",  # Ray restarts a killed worker (or one on a lost node)
    "rollout.max_episode_attempts=20",  # an episode may be hit by several faults in a row
    "serve.num_replicas=2",  # one replica down, the other answers the retried request
    "reflector.endpoint.max_retries=8",  # ~2 min of backoff: longer than a replica's restart
)
"""What a run on a cluster that loses processes every few seconds sets, clean runs alike."""


def log(message: str) -> None:
    print(f"[chaos] {message}", file=sys.stderr, flush=True)


# -- the cluster ---------------------------------------------------------------------------------


class LocalCluster:
    """A head and worker nodes of ``ray.cluster_utils.Cluster`` in this process, with a Ray temp
    directory of their own; this process is connected to it (the state API, Serve's start)."""

    def __init__(self, worker_nodes: int, node_cpus: float, head_cpus: float, port: int) -> None:
        import ray
        from ray import serve
        from ray.cluster_utils import Cluster

        self.node_cpus = node_cpus
        self.temp_dir = tempfile.mkdtemp(prefix="rc-", dir="/tmp")  # short: socket paths
        head = {"num_cpus": head_cpus, "temp_dir": self.temp_dir, "include_dashboard": True}
        self.cluster = starting(
            "the head node",
            lambda: Cluster(initialize_head=True, head_node_args={**head, "dashboard_port": 0}),
        )
        for _ in range(worker_nodes):
            self.add_worker()
        ray.init(address=self.address, logging_level="WARNING", log_to_driver=False)
        self.dashboard = f"http://{self.cluster.webui_url}"
        # Nodes share one address here: a proxy per node would fight for the port.
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})

    @property
    def address(self) -> str:
        return self.cluster.address

    @property
    def session_logs(self) -> Path:
        return Path(self.temp_dir) / "session_latest" / "logs"

    def add_worker(self) -> None:
        starting(
            "a worker node",
            lambda: self.cluster.add_node(num_cpus=self.node_cpus, temp_dir=self.temp_dir),
        )

    def worker_nodes(self) -> list[Any]:
        return sorted(self.cluster.worker_nodes, key=lambda n: n.node_id)

    def remove_worker(self, node: Any) -> None:
        """Kill every process of the node at once (no grace), then start a replacement."""
        self.cluster.remove_node(node, allow_graceful=False)
        self.add_worker()

    def actors(self) -> list[Any]:
        from ray.util.state import list_actors

        return list_actors(
            address=self.dashboard,
            filters=[("state", "=", "ALIVE")],
            detail=True,
            limit=10_000,
            raise_on_missing_output=False,
        )

    def shutdown(self) -> None:
        import ray

        ray.shutdown()
        self.cluster.shutdown()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def starting(what: str, start: Callable[[], Any], attempts: int = 3) -> Any:
    """``start()``, again when Ray says the node timed out during startup (its raylet has 30 s
    to register, which a loaded 2-core machine can miss)."""
    for attempt in range(1, attempts + 1):
        try:
            return start()
        except Exception as exc:
            if "timed out during startup" not in str(exc) or attempt == attempts:
                raise
            log(f"{what} did not start in time; starting it again ({attempt}/{attempts})")
    raise AssertionError("unreachable")


# -- the driver ----------------------------------------------------------------------------------


@dataclass
class TrainDriver:
    """``retro-ray train`` in a process of its own, joined to the cluster; one log file per
    incarnation (a killed driver is started again with the same command and run directory)."""

    args: list[str]
    env: dict[str, str]
    log_dir: Path
    process: subprocess.Popen | None = None
    incarnations: list[Path] = field(default_factory=list)
    exit_codes: list[int] = field(default_factory=list)
    killed: bool = False  # the current incarnation was killed by the injector

    def start(self) -> None:
        path = self.log_dir / f"driver-{len(self.incarnations)}.log"
        self.incarnations.append(path)
        cmd = [sys.executable, "-m", "retro_ray.cli", "train", *self.args]
        with path.open("w") as out:
            self.process = subprocess.Popen(
                cmd, cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        self.killed = False

    def poll(self) -> int | None:
        assert self.process is not None
        code = self.process.poll()
        if code is not None and len(self.exit_codes) < len(self.incarnations):
            self.exit_codes.append(code)
        return code

    def kill(self) -> int:
        """SIGKILL; the pid killed."""
        assert self.process is not None
        pid = self.process.pid
        self.killed = True
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.poll()
        return pid

    def current_log(self) -> str:
        return self.incarnations[-1].read_text(errors="replace") if self.incarnations else ""


def train_command(
    config: str, run_dir: Path, app: str, port: int, sets: Sequence[str]
) -> list[str]:
    """The arguments of ``retro-ray train`` for one run (its own app, route and directory)."""
    overrides = [
        *sets,
        f"run.output_dir={run_dir.parent}",
        f"run.name={run_dir.name}",
        f"serve.app_name={app}",
        f"serve.route_prefix=/{app}",
        f"serve.port={port}",
    ]
    args = ["--config", config]
    for override in overrides:
        args += ["--set", override]
    return [*args, "--json", str(run_dir.parent / f"{run_dir.name}.summary.json")]


# -- the faults ----------------------------------------------------------------------------------


@dataclass
class Fault:
    kind: str
    at_s: float  # seconds since the chaos run started
    target: str  # what was killed (pid, node id, rank)


class FaultInjector:
    """Kills one thing of the seeded schedule each time :meth:`inject` finds it present."""

    def __init__(self, kinds: Sequence[str], total: int, seed: int, app: str) -> None:
        unknown = sorted(set(kinds) - set(FAULT_KINDS))
        if unknown:
            raise ValueError(f"unknown fault kinds {unknown}; expected some of {FAULT_KINDS}")
        self.rng = random.Random(seed)
        self.schedule = fault_schedule(list(kinds), total, self.rng)
        self.app = app
        self.faults: list[Fault] = []
        self.learner_kills = 0

    @property
    def next_kind(self) -> str | None:
        return self.schedule[len(self.faults)] if len(self.faults) < len(self.schedule) else None

    def inject(
        self, cluster: LocalCluster, driver: TrainDriver, progressed: bool, t: float
    ) -> bool:
        """Kill the next scheduled kind if a target is there now; whether a fault was made."""
        kind = self.next_kind
        if kind is None:
            return False
        target = self._kill(kind, cluster, driver, progressed)
        if target is None:
            return False
        self.faults.append(Fault(kind, round(t, 1), target))
        log(f"fault {len(self.faults)}/{len(self.schedule)} at {t:.0f}s: {kind} {target}")
        return True

    def _kill(
        self, kind: str, cluster: LocalCluster, driver: TrainDriver, progressed: bool
    ) -> str | None:
        if kind == "driver":
            return f"pid {driver.kill()}" if progressed else None
        if kind == "node":
            nodes = cluster.worker_nodes()
            if not nodes:
                return None
            node = self.rng.choice(nodes)
            cluster.remove_worker(node)
            return f"node {node.node_id[:12]}"
        actors = cluster.actors()
        if kind == "rollout_worker":
            return self._kill_actor([a for a in actors if a.class_name == "RolloutWorker"])
        if kind == "serve_replica":
            prefix = f"ServeReplica:{self.app}:"
            return self._kill_actor([a for a in actors if a.class_name.startswith(prefix)])
        return self._kill_rank([a for a in actors if a.class_name == "RayTrainWorker"], driver)

    def _kill_actor(self, candidates: list[Any], label: str = "") -> str | None:
        candidates = [a for a in candidates if a.pid]
        if not candidates:
            return None
        actor = self.rng.choice(sorted(candidates, key=lambda a: a.pid))
        if not kill_pid(actor.pid):
            return None
        return f"{actor.class_name} pid {actor.pid} on node {actor.node_id[:12]}{label}"

    def _kill_rank(self, workers: list[Any], driver: TrainDriver) -> str | None:
        """Rank 0 and another rank in turn. Rank 0 is known from its process-group line in the
        driver's output (a group killed while starting never prints the controller's list of
        every rank); the others are the group's workers that are not rank 0."""
        ranks = learner_ranks(driver.current_log())
        alive = [a for a in workers if a.pid]
        zero = [a for a in alive if ranks.get(a.pid) == 0]
        others = [a for a in alive if ranks.get(a.pid) != 0]
        if not zero or not others:
            return None  # the group is not (fully) up: its ranks are not known yet
        target = zero if self.learner_kills % 2 == 0 else others
        actor = self.rng.choice(sorted(target, key=lambda a: a.pid))
        rank = ranks.get(actor.pid)
        found = self._kill_actor([actor], f" (rank {'not 0' if rank is None else rank})")
        if found is not None:
            self.learner_kills += 1
        return found


def fault_schedule(kinds: list[str], total: int, rng: random.Random) -> list[str]:
    """``total`` kinds in rounds that each hold every kind once, shuffled per round."""
    schedule: list[str] = []
    while len(schedule) < total:
        round_ = list(kinds)
        rng.shuffle(round_)
        schedule += round_
    return schedule[:total]


RANK_LINES = (
    re.compile(r"\(RayTrainWorker pid=(\d+)[^)]*\).*\[rank=(\d+), world_size=\d+\]"),
    re.compile(r"\(ip=[^,]*, pid=(\d+)\) world_rank=(\d+)"),  # the Train controller's list
)


def learner_ranks(driver_log: str) -> dict[int, int]:
    """pid -> world rank of the Ray Train workers the driver's output announced (the driver runs
    with ``RAY_DEDUP_LOGS=0``: deduplication would hide every rank's line but one)."""
    return {
        int(pid): int(rank) for pattern in RANK_LINES for pid, rank in pattern.findall(driver_log)
    }


def kill_pid(pid: int) -> bool:
    """SIGKILL a Ray worker process of this machine; False if it is gone already."""
    import psutil

    try:
        process = psutil.Process(pid)
        if not any("ray::" in part or "default_worker" in part for part in process.cmdline()):
            return False  # the pid was reused by something that is not a Ray worker
        process.send_signal(signal.SIGKILL)
        return True
    except psutil.Error:
        return False


# -- one run, with or without faults --------------------------------------------------------------


@dataclass
class RunResult:
    run_dir: Path
    wall_s: float
    faults: list[Fault]
    driver_logs: list[Path]
    exit_codes: list[int]
    unexpected_exits: int  # driver exits that were neither a success nor our kill


def run_train(
    cluster: LocalCluster,
    run_dir: Path,
    args: list[str],
    injector: FaultInjector | None,
    interval_s: float,
    timeout_s: float,
    max_restarts: int = 10,
) -> RunResult:
    """One ``retro-ray train`` to the end, killed and resumed as the injector says."""
    env = {
        **os.environ,
        "RAY_ADDRESS": cluster.address,
        "OMP_NUM_THREADS": "1",
        "RAY_DEDUP_LOGS": "0",  # every rank's start line (learner_ranks) and every retry line
        "RETRO_RAY_RAY_LOGS": "console",  # the workers' lines in the driver's output (ranks)
    }
    driver = TrainDriver(args, env, run_dir.parent / f"{run_dir.name}-logs")
    driver.log_dir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    driver.start()
    try:
        unexpected = drive(cluster, run_dir, driver, injector, interval_s, timeout_s, max_restarts)
    finally:  # an error or Ctrl-C here: the run's driver must not outlive the benchmark
        if driver.process is not None and driver.process.poll() is None:
            driver.kill()
    return RunResult(
        run_dir,
        time.monotonic() - start,
        list(injector.faults) if injector else [],
        list(driver.incarnations),
        list(driver.exit_codes),
        unexpected,
    )


def drive(
    cluster: LocalCluster,
    run_dir: Path,
    driver: TrainDriver,
    injector: FaultInjector | None,
    interval_s: float,
    timeout_s: float,
    max_restarts: int,
) -> int:
    """Watch the started driver to its success, injecting faults and starting it again after
    each exit; the exits that were not a fault (a crash: resumed too, and counted)."""
    start = time.monotonic()
    rng = random.Random(None if injector is None else injector.rng.random())
    next_fault = start + interval_s
    unexpected = 0
    progress_mark = run_progress(run_dir)
    while (code := driver.poll()) != 0:
        now = time.monotonic()
        if code is not None:
            if not driver.killed:
                unexpected += 1
                log(f"driver exited with {code} (not a fault); see {driver.incarnations[-1]}")
            if len(driver.incarnations) > max_restarts + _driver_faults(injector):
                raise RuntimeError(f"the driver keeps failing; see {driver.incarnations[-1]}")
            driver.start()
            progress_mark = run_progress(run_dir)
            continue
        if now - start > timeout_s:
            raise TimeoutError(f"the run did not finish within {timeout_s:.0f}s")
        if injector is not None and injector.next_kind is not None and now >= next_fault:
            progressed = run_progress(run_dir) != progress_mark
            if injector.inject(cluster, driver, progressed, now - start):
                next_fault = now + interval_s * rng.uniform(0.5, 1.5)
                continue  # a killed driver is started again on the next poll
        time.sleep(0.5)
    return unexpected


def _driver_faults(injector: FaultInjector | None) -> int:
    return 0 if injector is None else sum(f.kind == "driver" for f in injector.faults)


def run_progress(run_dir: Path) -> tuple[int, int]:
    """Episode files and iteration records so far: a driver has progressed when this changed."""
    episodes = sum(1 for _ in (run_dir / "experience").glob("run=*/iteration=*/part-*.parquet"))
    metrics = run_dir / "metrics.jsonl"
    records = metrics.read_text().count("\n") if metrics.is_file() else 0
    return episodes, records


# -- the audits ----------------------------------------------------------------------------------


def required_keys(main: dict[int, tuple[bool, bool]], max_trials: int, m: int) -> set[tuple]:
    """The (trial, sample) keys the branching rule requires of one episode, given its main chain
    (trial -> (won, failed)): trial 0; after each failed main-chain trial k < max_trials - 1
    that neither won nor stopped on bad input, samples 0..m-1 of trial k + 1."""
    keys = {(0, 0)}
    k = 0
    while k in main and k < max_trials - 1:
        won, failed = main[k]
        if won or failed:
            break
        keys |= {(k + 1, i) for i in range(m)}
        k += 1
    return keys


def audit_experience(run_dir: Path, cfg: Any) -> dict[str, int]:
    """Every (task, trial, sample) the branching rule requires, exactly once (see the module
    docstring)."""
    from retro_ray.driver.train import train_tasks
    from retro_ray.rollout.experience import ExperienceLog

    log_ = ExperienceLog(run_dir / "experience")
    columns = ["iteration", "task_id", "trial", "sample", "won", "failure"]
    rows = log_.read(cfg.run.name, columns=columns).to_pylist()
    counts = Counter((r["iteration"], r["task_id"], r["trial"], r["sample"]) for r in rows)
    main = {
        (r["iteration"], r["task_id"], r["trial"]): (bool(r["won"]), r["failure"] is not None)
        for r in rows
        if r["sample"] == 0
    }
    tasks, per = train_tasks(cfg), cfg.train.failed_trials_per_iteration
    required: set[tuple] = set()
    for it in range(cfg.train.iterations):
        for task in tasks[it * per : (it + 1) * per]:
            chain = {t: v for (i, tid, t), v in main.items() if i == it and tid == task.task_id}
            keys = required_keys(chain, cfg.trials.max_trials, cfg.train.group_size)
            required |= {(it, task.task_id, *key) for key in keys}
    quarantine = run_dir / "experience" / "_quarantine"
    return {
        "records": len(rows),
        "required_records": len(required),
        "lost_records": len(required - set(counts)),
        "duplicate_records": sum(n - 1 for n in counts.values() if n > 1),
        "unexpected_records": len(set(counts) - required),
        "rejected_requests": sum(r["failure"] is not None for r in rows),
        "quarantined_files": sum(1 for p in quarantine.rglob("*") if p.is_file())
        if quarantine.is_dir()
        else 0,
    }


def audit_learner(run_dir: Path, cfg: Any) -> dict[str, Any]:
    """Batches: the checkpoint cursor against the iterations' submitted batches, the learner's
    cursors in the records, the registry's versions against the steps."""
    from retro_ray.learner.checkpoint import CheckpointStore, read_state
    from retro_ray.registry import AdapterRegistry

    records = read_jsonl(run_dir / "metrics.jsonl")
    iterations = [r["iteration"] for r in records]
    submitted = sum(1 for r in records if r["groups"] and not r.get("dropped"))
    store = CheckpointStore(run_dir / "learner" / "learner" / "checkpoints")
    latest = store.latest()
    cursor = read_state(latest).cursor if latest is not None else 0
    seqs = [int(r["learner_cursor"]) for r in records if "learner_cursor" in r]
    registry = AdapterRegistry(
        cfg.registry.root or run_dir / "registry", cfg.serve.model_dir, cfg.registry.name
    )
    steps = [registry.get(version).step for version in registry.versions()]
    digests = step_digests(run_dir)
    return {
        "iteration_records": len(records),
        "iterations_recorded_once": sorted(iterations) == list(range(cfg.train.iterations)),
        "batches_submitted": submitted,
        "checkpoint_cursor": cursor,
        "lost_batches": max(0, submitted - cursor),
        "duplicate_batches": max(0, cursor - submitted)
        + sum(len(d) - 1 for d in digests.values())
        + (len(seqs) - len(set(seqs))),
        "record_cursors_increasing": seqs == sorted(set(seqs)),
        "registry_versions": len(steps),
        "registry_steps": sorted(digests),
        "registry_steps_consecutive": sorted(digests) == list(range(1, cursor + 1)),
        "republished_versions": len(steps) - len(digests),
    }


def step_digests(run_dir: Path) -> dict[int, set[str]]:
    """learner step -> the weights' digests of the registry's versions of that step."""
    from retro_ray.evaluation.play import run_config
    from retro_ray.registry import AdapterRegistry

    cfg = run_config(run_dir)
    registry = AdapterRegistry(
        cfg.registry.root or run_dir / "registry", cfg.serve.model_dir, cfg.registry.name
    )
    digests: dict[int, set[str]] = {}
    for version in registry.versions():
        meta = registry.get(version)
        digests.setdefault(meta.step, set()).add(_digest(meta.files))
    return digests


def compare_weights(chaos_dir: Path, clean_dir: Path) -> dict[str, int]:
    """Steps whose adapter weights are bitwise those of the clean run with the same seeds
    (sampling is seeded per task, trial and sample, and the learner's state is checkpointed
    whole, so a run that loses or repeats nothing can match the clean run exactly)."""
    chaos, clean = step_digests(chaos_dir), step_digests(clean_dir)
    return {
        "steps_compared": len(clean),
        "steps_identical": sum(chaos.get(step) == digest for step, digest in clean.items()),
    }


def _digest(files: dict[str, str]) -> str:
    """The weights' digest (the config's module list is a set, saved in any order)."""
    weights = sorted((name, sha) for name, sha in files.items() if not name.endswith(".json"))
    return hashlib.sha256(json.dumps(weights).encode()).hexdigest()


FAILED_LINE = re.compile(r"request failed for good")
WORKER_PREFIX = re.compile(r"(\x1b\[\d+m)?\([^)]*pid=\d+")  # "(RolloutWorker pid=12) ..."
RETRY_LINE = re.compile(r"endpoint \S+ \(model [^)]*\): .*; retry \d+/\d+ in")


def audit_requests(result: RunResult, cluster_logs: Path, experience: dict[str, int]) -> dict:
    """Requests to the Serve app that failed: for good (reached the caller) and retried."""
    driver_text = "\n".join(p.read_text(errors="replace") for p in result.driver_logs)
    pool_failures = len(FAILED_LINE.findall(driver_text))
    gates = read_jsonl(result.run_dir / "gates.jsonl")
    gate_errors = sum(1 for g in gates if g.get("outcome") == "error")
    endpoint_exits = sum(1 for c in result.exit_codes if c == EXIT_ENDPOINT)
    # The driver's own requests (the gate's); the workers' lines it relays are in their files.
    own = [line for line in driver_text.splitlines() if not WORKER_PREFIX.match(line)]
    retried = len(RETRY_LINE.findall("\n".join(own)))
    for path in cluster_logs.rglob("worker-*.err") if cluster_logs.is_dir() else []:
        retried += len(RETRY_LINE.findall(path.read_text(errors="replace")))
    records = read_jsonl(result.run_dir / "metrics.jsonl")
    return {
        "failed_requests": pool_failures
        + experience["rejected_requests"]
        + gate_errors
        + endpoint_exits,
        "failed_requests_by_source": {
            "rollout_gave_up": pool_failures,
            "rejected": experience["rejected_requests"],
            "gate_errors": gate_errors,
            "driver_endpoint_exits": endpoint_exits,
        },
        "failed_requests_in_metrics": sum(r.get("failed_requests", 0) for r in records),
        "retried_requests": retried,
    }


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a JSON-lines file; a torn last line (a killed writer) is skipped."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def audit_run(result: RunResult, cluster_logs: Path) -> dict[str, Any]:
    from retro_ray.evaluation.play import run_config

    cfg = run_config(result.run_dir)
    experience = audit_experience(result.run_dir, cfg)
    return {
        **experience,
        **audit_learner(result.run_dir, cfg),
        **audit_requests(result, cluster_logs, experience),
        "driver_incarnations": len(result.driver_logs),
        "unexpected_driver_exits": result.unexpected_exits,
    }


# -- held-out success ----------------------------------------------------------------------------


def heldout_success(run_dir: Path, eval_dir: Path, tasks: int, seeds: int) -> dict[str, Any]:
    """Retroformer (greedy) of the run's trained adapter on the test tasks: last-trial success
    and its bootstrap ci95."""
    from retro_ray.evaluation.play import evaluate_run

    table = evaluate_run(
        run_dir,
        ["retroformer"],
        seeds,
        [f"env.num_tasks={tasks}"],
        eval_dir,
        decodings=("greedy",),
        progress=False,
    )
    row = table["agents"]["retroformer-greedy"]
    return {
        "success": row["success_by_trial"][-1],
        "ci95": row["ci95"],
        "adapter": table["adapter"],
    }


def compare_heldout(chaos: dict[str, Any], clean: list[dict[str, Any]]) -> dict[str, Any]:
    """The chaos run against the clean run with its seeds (``clean[0]``), within the spread."""
    values = [c["success"] for c in clean]
    lo, hi = clean[0]["ci95"]
    spread = max(max(values) - min(values), (hi - lo) / 2)
    delta = chaos["success"] - clean[0]["success"]
    return {
        "heldout_success_chaos": chaos["success"],
        "heldout_success_clean": clean[0]["success"],
        "heldout_success_clean_seeds": values,
        "heldout_delta": round(delta, 4),
        "spread": round(spread, 4),
        "spread_from": "max(range over clean seeds, half-width of the clean run's ci95)",
        "heldout_within_spread": abs(delta) <= spread + 1e-9,
        "adapters": {"chaos": chaos["adapter"], "clean": [c["adapter"] for c in clean]},
    }


# -- the benchmark -------------------------------------------------------------------------------


@dataclass
class ChaosSettings:
    config: str = "configs/train_tiny.yaml"
    out: Path = Path("runs/chaos")
    seed: int = 0
    faults: int = 25
    kinds: tuple[str, ...] = FAULT_KINDS
    interval_s: float = 6.0
    iterations: int = 20
    worker_nodes: int = 2
    node_cpus: float = 2.0
    head_cpus: float = 2.0
    port: int = 8150
    clean_runs: int = 3
    eval_tasks: int = 40
    eval_seeds: int = 1
    timeout_s: float = 3600.0
    sets: tuple[str, ...] = ()

    def train_sets(self, seed: int) -> list[str]:
        return [
            *CHAOS_OVERRIDES,
            f"train.iterations={self.iterations}",
            f"train.promote_every={self.iterations}",
            f"run.seed={seed}",
            *self.sets,
        ]


def run_chaos(settings: ChaosSettings) -> dict[str, Any]:
    """The chaos run and its audits, then the clean runs and the held-out comparison. What is
    measured so far is in ``<out>/chaos.json`` after each stage."""
    from retro_ray.run_config import load_run_config

    load_run_config(settings.config, settings.train_sets(settings.seed))  # fail before the cluster
    out = settings.out.resolve()
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty: the chaos run needs a fresh --out")
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    cluster = LocalCluster(
        settings.worker_nodes, settings.node_cpus, settings.head_cpus, settings.port
    )
    try:
        chaos, audit = chaos_run(cluster, settings, out)
        result = summary(chaos, audit, settings)
        write_result(out, result, start)
        clean = clean_runs(cluster, settings, out)
        result["clean_wall_s"] = [round(c.wall_s, 1) for c in clean]
        if clean:
            result["weights_vs_clean"] = compare_weights(chaos.run_dir, clean[0].run_dir)
    finally:
        cluster.shutdown()
    if clean:
        log("held-out evaluation of every run's trained adapter")
        evals = out / "eval"
        tasks, seeds = settings.eval_tasks, settings.eval_seeds
        chaos_eval = heldout_success(chaos.run_dir, evals, tasks, seeds)
        clean_eval = [heldout_success(c.run_dir, evals, tasks, seeds) for c in clean]
        result.update(compare_heldout(chaos_eval, clean_eval), eval_tasks=tasks * seeds)
    result["goal_met"] = goal_met(result)
    write_result(out, result, start)
    return result


def chaos_run(
    cluster: LocalCluster, settings: ChaosSettings, out: Path
) -> tuple[RunResult, dict[str, Any]]:
    injector = FaultInjector(settings.kinds, settings.faults, settings.seed, "chaos")
    chaos_dir = out / "chaos"
    sets = settings.train_sets(settings.seed)
    args = train_command(settings.config, chaos_dir, "chaos", settings.port, sets)
    log(f"chaos run: {settings.faults} faults of {', '.join(settings.kinds)}")
    chaos = run_train(cluster, chaos_dir, args, injector, settings.interval_s, settings.timeout_s)
    return chaos, audit_run(chaos, cluster.session_logs)


def clean_runs(cluster: LocalCluster, settings: ChaosSettings, out: Path) -> list[RunResult]:
    """Undisturbed runs, ``run.seed`` = the chaos run's, then the next ones."""
    runs = []
    for i in range(settings.clean_runs):
        seed, run_dir = settings.seed + i, out / f"clean{i}"
        log(f"clean run {i} (run.seed={seed})")
        args = train_command(
            settings.config, run_dir, f"clean{i}", settings.port, settings.train_sets(seed)
        )
        runs.append(run_train(cluster, run_dir, args, None, 0, settings.timeout_s))
    return runs


def summary(chaos: RunResult, audit: dict[str, Any], settings: ChaosSettings) -> dict[str, Any]:
    return {
        "faults_injected": len(chaos.faults),
        "faults_by_kind": dict(Counter(f.kind for f in chaos.faults)),
        "fault_kinds": len({f.kind for f in chaos.faults}),
        **{k: audit[k] for k in ("lost_records", "duplicate_records", "failed_requests")},
        "lost_batches": audit["lost_batches"],
        "duplicate_batches": audit["duplicate_batches"],
        "audit": audit,
        "faults": [dataclasses.asdict(f) for f in chaos.faults],
        "chaos_wall_s": round(chaos.wall_s, 1),
        "settings": {k: str(v) for k, v in dataclasses.asdict(settings).items()},
    }


def write_result(out: Path, result: dict[str, Any], start: float) -> None:
    result["wall_s"] = round(time.monotonic() - start, 1)
    (out / "chaos.json").write_text(json.dumps(result, indent=2))


def goal_met(result: dict[str, Any]) -> bool:
    """Lost 0, duplicates 0, no failed request, >= 20 faults of >= 4 kinds, held-out within."""
    return (
        result["lost_records"] == 0
        and result["duplicate_records"] == 0
        and result["failed_requests"] == 0
        and result["lost_batches"] == 0
        and result["duplicate_batches"] == 0
        and result["faults_injected"] >= 20
        and result["fault_kinds"] >= 4
        and bool(result.get("heldout_within_spread"))
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    d = ChaosSettings()
    p.add_argument("--config", default=d.config, help="training configuration")
    p.add_argument("--out", default=str(d.out), help="a fresh directory for the runs")
    p.add_argument("--seed", type=int, default=d.seed, help="run.seed and the injector's seed")
    p.add_argument("--faults", type=int, default=d.faults, help="faults to inject")
    p.add_argument("--kinds", default=",".join(d.kinds), help=f"some of {','.join(FAULT_KINDS)}")
    p.add_argument("--interval", type=float, default=d.interval_s, help="seconds between faults")
    p.add_argument("--iterations", type=int, default=d.iterations, help="train.iterations")
    p.add_argument("--worker-nodes", type=int, default=d.worker_nodes)
    p.add_argument("--node-cpus", type=float, default=d.node_cpus, help="logical CPUs per node")
    p.add_argument("--port", type=int, default=d.port, help="the Serve proxy's port")
    p.add_argument("--clean-runs", type=int, default=d.clean_runs, help="0: no held-out check")
    p.add_argument("--eval-tasks", type=int, default=d.eval_tasks, help="test tasks per seed")
    p.add_argument("--eval-seeds", type=int, default=d.eval_seeds)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = p.parse_args(argv)
    if args.worker_nodes < 2:
        p.error("--worker-nodes must be >= 2 (a multi-node cluster)")
    settings = ChaosSettings(
        config=args.config,
        out=Path(args.out),
        seed=args.seed,
        faults=args.faults,
        kinds=tuple(k for k in args.kinds.split(",") if k),
        interval_s=args.interval,
        iterations=args.iterations,
        worker_nodes=args.worker_nodes,
        node_cpus=args.node_cpus,
        head_cpus=d.head_cpus,
        port=args.port,
        clean_runs=args.clean_runs,
        eval_tasks=args.eval_tasks,
        eval_seeds=args.eval_seeds,
        sets=tuple(args.set),
    )
    with stdout_for_json_only() as stdout:
        result = run_chaos(settings)
        print(json.dumps(result, indent=None if args.json else 2), file=stdout, flush=True)
    return 0


@contextlib.contextmanager
def stdout_for_json_only() -> Iterator[TextIO]:
    """Within the block, whatever writes to file descriptor 1 (the Ray processes this one starts
    inherit it, and print raylet messages there) goes to stderr; the real stdout is yielded."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with open(os.dup(saved), "w") as stdout:
            yield stdout
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


if __name__ == "__main__":
    sys.exit(main())
