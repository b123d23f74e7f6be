"""The chaos run's faults (``benchmarks.chaos``): the seeded injector that kills a rollout worker, a
worker node, a learner rank, a Serve replica or the driver, and one ``retro-ray train`` driven to
its end under it (killed and resumed as the injector says), or undisturbed for a clean run."""

from __future__ import annotations

import os
import random
import re
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.chaos_cluster import LocalCluster, TrainDriver, log

FAULT_KINDS = ("rollout_worker", "node", "learner_rank", "serve_replica", "driver")


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
