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
the run (:func:`benchmarks.chaos_audit.audit_run`):

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

This module holds the settings, the order of the runs, the summary and the command line; the
cluster and the driver's process are in ``benchmarks.chaos_cluster``, the injector and the loop
that drives one run under it in ``benchmarks.chaos_faults``, the audits and the held-out
evaluation in ``benchmarks.chaos_audit``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from benchmarks.chaos_audit import audit_run, compare_heldout, compare_weights, heldout_success
from benchmarks.chaos_cluster import LocalCluster, log, train_command
from benchmarks.chaos_faults import FAULT_KINDS, FaultInjector, RunResult, run_train

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
