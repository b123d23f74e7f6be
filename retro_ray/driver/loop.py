"""The Retroformer training loop, one for every executor: collect, learn, publish, swap, gate.

Each iteration reads like the paper (docs/design.md):

1. **collect** (:meth:`TrainingLoop.collect`): the collector plays train-split tasks; at each
   failed trial of a task's main chain it samples ``m`` reflections from the served ``train``
   adapter and plays one next trial per reflection (reward ``G(k+1) - G(k)``: the branching rule of
   ``retro_ray.rollout.episodes``); every trial lands in the Parquet experience log, and the
   iteration's rows become reflection groups (``retro_ray.learner.offline.load_groups``);
2. **learn** (:meth:`TrainingLoop.learn`): the groups become one batch (group baseline,
   ``retro_ray.learner.offline.group_batch``), submitted to the learner;
3. **publish** (:meth:`TrainingLoop.publish`): the learner applies the batch and publishes the
   adapter to the registry as ``train``;
4. **swap** (:meth:`TrainingLoop.swap`): the serving side hot-swaps that version in before the
   next collection (synchronous: strictly on-policy by default);
5. **gate** (:meth:`TrainingLoop.gate`): every ``promote_every`` iterations (and after the last)
   the promotion gate evaluates ``train`` against ``prod`` and moves ``prod`` only if it is not
   worse.

The stages take their executors as parameters, so the same loop runs on Ray (``retro-ray train``,
``retro_ray.driver.train``: the rollout pool, the Serve app, the Ray Train learner) and in one
process (the learning proof, ``retro_ray.driver.local``: the episode runner on an event loop, a
torch backend with adapters, the learner's update in the driver).

With ``train.overlap`` the loop does not wait for steps 3 and 4: it submits batch ``i`` and
collects iteration ``i + 1`` at once, while the learner trains and the serving side hot-swaps the
new adapter in mid-collection (each row records the ``adapter_version`` that wrote it). Before it
submits batch ``i + 1`` it waits until batch ``i`` is applied and served, so one batch at most is
in flight. Each iteration's record holds the versions its collection used and its ``staleness``
(:class:`BatchFlow`); a batch staler than ``learner.max_staleness`` is dropped, never trained on.

Resumable: with the same run directory, iterations whose rows are in the log are not played again
(the collector skips them), batches already in the learner's checkpoint are not submitted again,
and ``metrics.jsonl`` keeps the records of finished iterations; a gate that raised or never ran
runs again (``retro_ray.driver.gate.GateLog``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from retro_ray.algo import ReflectionBatch
from retro_ray.config import LearnerConfig, TrainConfig
from retro_ray.durable import append_jsonl, read_jsonl
from retro_ray.envs.base import Task
from retro_ray.learner.offline import OfflineGroup, group_batch, load_groups
from retro_ray.ray_cluster import cluster_cpus
from retro_ray.registry import TRAIN_ALIAS, AdapterRegistry
from retro_ray.rollout.experience import ExperienceLog
from retro_ray.rollout.pool import CollectionReport


def log(message: str) -> None:
    print(f"[train] {message}", file=sys.stderr, flush=True)


# -- the executors -----------------------------------------------------------------------------


class Collector(Protocol):
    """Plays an iteration's training episodes into ``log``: ``retro_ray.rollout.pool.RolloutPool``
    (Ray actors) or ``retro_ray.rollout.local.LocalCollector`` (this process)."""

    log: ExperienceLog

    def collect(self, tasks: Sequence[Task], iteration: int) -> CollectionReport: ...


class Learner(Protocol):
    """Applies batches and publishes each adapter as ``train``:
    ``retro_ray.learner.distributed.DistributedLearner`` (Ray Train) or
    ``retro_ray.learner.inprocess.InProcessLearner`` (this process)."""

    def submit(
        self,
        batch: ReflectionBatch,
        collected_step: int | None = None,
        info: dict[str, float] | None = None,
    ) -> int: ...

    def wait_applied(self, cursor: int, timeout_s: float = 600.0) -> int: ...

    def state(self) -> dict[str, Any]: ...

    def metrics(self, since: int = 0) -> list[dict[str, float]]: ...


class Serving(Protocol):
    """Serves the registry's ``train`` alias to the collector: the Serve app
    (``retro_ray.driver.train.ServeAppServing``) or ``retro_ray.serve.inprocess.InProcessServing``."""

    @property
    def registry(self) -> AdapterRegistry: ...

    def wait_until_served(self, version: int) -> float: ...


class Gauges(Protocol):
    def set(self, metrics: dict[str, float]) -> None: ...


# -- staleness ---------------------------------------------------------------------------------


def adapter_versions(rows: Any, adapter_name: str) -> list[int]:
    """The registry versions that wrote the rows' reflections, sorted: the integer the server
    returned (``adapter_version_number``, schema 3; 0 is the base model), else, in older logs,
    parsed from the response's model name ``<adapter_name>@<version>`` (``retro@3``). Rows
    without a reflection, or written by another reflector, are left out."""
    names = rows.column_names
    numbers = (
        rows.column("adapter_version_number").to_pylist()
        if "adapter_version_number" in names
        else [None] * rows.num_rows
    )
    labels = (
        rows.column("adapter_version").to_pylist()
        if "adapter_version" in names
        else [None] * rows.num_rows
    )
    prefix = f"{adapter_name}@"
    found = set()
    for number, name in zip(numbers, labels, strict=True):
        if number is not None:
            found.add(int(number))
        elif isinstance(name, str) and name.startswith(prefix) and name[len(prefix) :].isdigit():
            found.add(int(name[len(prefix) :]))
    return sorted(found)


@dataclass
class InFlight:
    """A batch the learner has not applied yet, and its iteration's record (finished when it is)."""

    seq: int
    record: dict[str, Any]


@dataclass
class BatchFlow:
    """Batches from the driver to the learner, with the staleness bound checked on the rows.

    Staleness is counted in learner steps (batches applied): the learner's cursor when the batch
    is submitted minus the step of the oldest adapter that wrote its rows (the registry records
    each version's step; version numbers alone drift from steps when a restarted learner
    publishes its checkpoint again)."""

    learner: Learner
    serving: Serving
    gauges: Gauges | None
    max_staleness: int
    adapter_name: str
    steps: dict[int, int] = field(default_factory=lambda: {0: 0})  # version -> learner step

    def step_of(self, version: int) -> int:
        if version not in self.steps:
            self.steps[version] = self.serving.registry.get(version).step
        return self.steps[version]

    def train_version(self) -> int:
        return self.serving.registry.state().aliases.get(TRAIN_ALIAS, 0)

    def submit(
        self, batch: ReflectionBatch, stats: dict[str, float], record: dict[str, Any]
    ) -> InFlight | None:
        """Queue the batch, recording its staleness; ``None`` (and a warning) when it is staler
        than ``max_staleness`` and is dropped. Call with no batch in flight."""
        cursor = int(self.learner.state()["acked"])  # steps in the weights the batch updates
        versions = record["collect_versions"]
        oldest = min((self.step_of(v) for v in versions), default=None)
        record.update(
            submit_step=cursor,
            submit_version=self.train_version(),
            staleness=None if oldest is None else cursor - oldest,
        )
        if oldest is None:
            log(
                f"iteration {record['iteration']}: no {self.adapter_name}@N rows, staleness unknown"
            )
        elif cursor - oldest > self.max_staleness:
            log(
                f"WARNING: dropping iteration {record['iteration']}'s batch: staleness "
                f"{cursor - oldest} > learner.max_staleness {self.max_staleness} (collected with "
                f"versions {versions}, learner at step {cursor})"
            )
            record["dropped"] = True
            return None
        collected_step = cursor if oldest is None else oldest
        seq = self.learner.submit(batch, collected_step=collected_step, info=stats)
        return InFlight(seq, record)

    def applied_metrics(self, seq: int, timeout_s: float = 10.0) -> dict[str, float]:
        """The learner's metrics of batch ``seq`` (their ``cursor``; rank 0 records them just
        after the acknowledgement, so they may lag ``wait_applied`` a moment); {} if none come."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = [m for m in self.learner.metrics() if int(m.get("cursor", -1)) == seq]
            if found or time.monotonic() > deadline:
                return found[-1] if found else {}
            time.sleep(0.1)


def earlier_records(metrics_path: Path) -> dict[int, dict[str, Any]]:
    """The iterations an earlier run of this directory finished (``metrics.jsonl``): a resumed
    run keeps their records instead of writing them again (their gates: ``GateLog``). A torn
    last line (the driver died mid-write) is skipped: that iteration is simply not finished."""
    return {r["iteration"]: r for r in read_jsonl(metrics_path)}


# -- the loop ----------------------------------------------------------------------------------


@dataclass
class TrainingLoop:
    """One training run's iterations over given executors; ``run`` returns the records.

    ``tasks``: the train-split tasks, ``train.failed_trials_per_iteration`` per iteration, in
    order. ``promote``: the gate's evaluation and decision for an iteration (its reason);
    ``None`` runs no gate (the single-process learning proof, which measures held-out reward
    itself). ``tokenizer``: the retrospective model's, only for groups logged without the
    engine's token ids (schema < 3); None: the log's ids are all the loop uses (the collection
    logs them), so the driver loads no tokenizer."""

    collector: Collector
    learner: Learner
    serving: Serving
    tokenizer: Any
    learner_cfg: LearnerConfig
    train_cfg: TrainConfig
    run_id: str
    run_dir: Path
    tasks: Sequence[Task]
    gates: Any = None  # retro_ray.driver.gate.GateLog (with ``promote``)
    promote: Callable[[int], str] | None = None
    gauges: Gauges | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.flow = BatchFlow(
            self.learner,
            self.serving,
            self.gauges,
            self.learner_cfg.max_staleness,
            self.serving.registry.name,
        )
        self.metrics_path = self.run_dir / "metrics.jsonl"

    @property
    def iterations(self) -> int:
        return self.train_cfg.iterations

    # -- stages --------------------------------------------------------------------------------

    def collect(self, it: int) -> tuple[list[OfflineGroup], dict[str, Any]]:
        """Play iteration ``it``'s tasks; its reflection groups and the start of its record."""
        per_iteration = self.train_cfg.failed_trials_per_iteration
        chunk = self.tasks[it * per_iteration : (it + 1) * per_iteration]
        t0 = time.monotonic()
        report = self.collector.collect(chunk, iteration=it)
        rows = self.collector.log.read(self.run_id, it)
        groups = load_groups(rows)
        record: dict[str, Any] = {
            "iteration": it,
            "groups": len(groups),
            "collect_s": time.monotonic() - t0,
            "collect_versions": adapter_versions(rows, self.serving.registry.name),
            "success_rate": report.success_rate,
            "failed_requests": report.failed_requests,  # gave up after retries
            "cpus": cluster_cpus(),  # retro-ray report: core-hours of training
        }
        return groups, record

    def learn(self, groups: Sequence[OfflineGroup], record: dict[str, Any]) -> InFlight | None:
        """The groups as one batch (group baseline), submitted unless too stale."""
        batch, stats = group_batch(
            groups,
            self.tokenizer,
            None,  # padding is masked: any id serves
            self.learner_cfg,
            loss_name=self.learner_cfg.loss.name,
        )
        record.update(stats)
        return self.flow.submit(batch, stats, record)

    def publish(self, flight: InFlight) -> int:
        """Wait until the learner applied the batch and published it; the ``train`` version."""
        record = flight.record
        t0 = time.monotonic()
        self.learner.wait_applied(flight.seq + 1)
        record["learn_wait_s"] = time.monotonic() - t0
        record["version"] = version = self.flow.train_version()
        return version

    def swap(self, flight: InFlight, version: int) -> dict[str, Any]:
        """Wait until the serving side serves ``version``; the batch's finished record, with the
        learner's metrics."""
        record = flight.record
        record["swap_s"] = self.serving.wait_until_served(version)
        step_metrics = self.flow.applied_metrics(flight.seq)
        if step_metrics:
            if self.gauges is not None:
                self.gauges.set({**step_metrics, "adapter_version": version})
            record.update({f"learner_{k}": v for k, v in step_metrics.items()})
        return record

    def settle(self, flight: InFlight) -> dict[str, Any]:
        """Publish, then swap: the batch's record (``learn_wait_s``, ``swap_s``, learner metrics)."""
        return self.swap(flight, self.publish(flight))

    def gate(self, it: int, resumed: bool = False) -> None:
        """The promotion gate of iteration ``it`` when it is due (outcome in ``gates.jsonl``)."""
        if self.promote is None or self.gates is None or not self.gates.due(it):
            return
        reason = self.promote(it)
        log(f"promotion gate{' (resumed)' if resumed else ''}: {reason}")

    # -- iterations ----------------------------------------------------------------------------

    def write(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        append_jsonl(self.metrics_path, record)  # fsynced; a torn line of a crash repaired first
        log(
            f"iteration {record['iteration'] + 1}/{self.iterations}: {record['groups']} groups, "
            f"reward {record.get('reward_mean', float('nan')):.3f}, "
            f"train version {record.get('version', '-')}, {record['seconds']:.1f}s"
        )

    def run(self) -> list[dict[str, Any]]:
        """Every iteration not finished by an earlier run; the records of all of them."""
        overlap = self.train_cfg.overlap
        applied_before = self.learner.state().get("acked", 0)  # batches of an earlier run
        earlier = earlier_records(self.metrics_path)
        in_flight: InFlight | None = None  # overlap: the batch training during collection
        for it in range(self.iterations):
            t0 = time.monotonic()
            groups, record = self.collect(it)
            if in_flight is not None:  # overlap: the batch trained during this collection
                self.write(self.settle(in_flight))
                in_flight = None
            # A batch an earlier run dropped as too stale is not in the learner's cursor.
            fresh = bool(groups) and not earlier.get(it, {}).get("dropped")
            submitted = False
            if fresh and applied_before > 0:  # in the learner's checkpoint already
                applied_before -= 1
            elif fresh:
                in_flight = self.learn(groups, record)
                submitted = True
            if it in earlier and not submitted:  # finished by an earlier run
                self.history.append(earlier[it])
                self.gate(it, resumed=True)  # its gate raised, or the driver died before it
                continue
            if in_flight is not None and (not overlap or it + 1 == self.iterations):
                self.settle(in_flight)  # synchronous, or the last batch before the gate
                in_flight = None
            record["seconds"] = time.monotonic() - t0  # the driver's time, the gate aside
            if in_flight is None:
                self.write(record)  # else once its batch is applied, after the next collection
            self.gate(it)
        return self.history
