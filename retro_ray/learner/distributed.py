"""The distributed learner, driver side: one long-lived Ray Train ``TorchTrainer.fit()`` fed
through a batch queue actor.

``fit()`` runs in a background thread of the driver for the whole run (under Train V2 each
``fit()`` spawns a new worker group, which costs tens of seconds here), while the driver keeps
collecting and calls :meth:`DistributedLearner.submit` per global batch. The worker loop is in
:mod:`retro_ray.learner.train_loop`, the exactly-once cursor in :mod:`retro_ray.learner.queue`.

Staleness: :meth:`submit` of batch ``n`` first waits until batches below ``n - max_staleness``
are applied and checkpointed (and published as the ``train`` adapter), so reflections are sampled
at most ``max_staleness`` learner steps behind the weights they update. ``max_staleness=0`` is
strictly on-policy (collect, update, publish, repeat); 1 overlaps one collection with one update.

Crash recovery: a dead worker makes Ray Train restart the group (``max_failures`` times) from the
latest checkpoint in ``<storage_dir>/<name>/checkpoints``; a restarted driver (same storage and
name) resumes from there too, and its new queue numbers batches from that checkpoint's cursor.
A worker that dies while Ray Train is still starting its group ends ``fit()`` with a
``ControllerError`` instead: the learner then starts a new ``fit()`` (at most ``max_failures``
times), which restores the same checkpoint and asks the same queue for the batch at its cursor, as
a restarted group would. Ray Train's own retry of a failed start is switched off
(``controller_failure_limit=0``): a worker lost in the group's last start-up steps (the torch
process group, launching the training function) leaves the rest of that group alive and holding
its placement group, which a retry in the same ``fit()`` never frees (the next group then waited
for CPUs forever). The end of the ``fit()`` takes its workers down, and the learner removes the
placement groups that ``fit()`` left (a placement group outlives the actor that made it: it is the
job's). Both found by the chaos run (``benchmarks/chaos.py``): before, the driver died with
``LearnerFailed``, or waited forever for CPUs.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from retro_ray.algo import ReflectionBatch
from retro_ray.config import LearnerConfig
from retro_ray.learner.checkpoint import CheckpointStore, read_state
from retro_ray.learner.queue import make_batch_queue
from retro_ray.learner.train_loop import LearnerJob, RegistryTarget, train_loop_per_worker

logger = logging.getLogger(__name__)


class LearnerFailed(RuntimeError):
    """The trainer stopped (out of restarts, or a bug in the worker loop)."""


def job_placement_groups() -> set[str]:
    """Ids of the placement groups this job (the driver) created that are not removed yet. A
    placement group made by an actor lives as long as the job unless someone removes it (a
    placement group id ends in its job's id)."""
    import ray
    from ray.util import placement_group_table

    job = ray.get_runtime_context().get_job_id()
    return {
        pg
        for pg, info in placement_group_table().items()
        if pg.endswith(job) and info["state"] != "REMOVED"
    }


def remove_placement_groups(ids: set[str]) -> int:
    """Remove the placement groups of ``ids`` (and the actors in them); how many."""
    from ray import PlacementGroupID
    from ray.util import remove_placement_group
    from ray.util.placement_group import PlacementGroup

    for pg in ids:
        remove_placement_group(PlacementGroup(PlacementGroupID.from_hex(pg)))
    return len(ids)


def scaling_options(config: LearnerConfig) -> dict[str, Any]:
    """What the learner asks Ray Train for: ``ScalingConfig``'s ``num_workers``, ``use_gpu`` and
    ``resources_per_worker`` (a GPU each with ``use_gpu``), and the process group's ``backend``
    (NCCL on GPUs, gloo on CPUs)."""
    resources = {"CPU": config.cpus_per_worker, **({"GPU": 1} if config.use_gpu else {})}
    return {
        "num_workers": config.num_workers,
        "use_gpu": config.use_gpu,
        "resources_per_worker": resources,
        "backend": "nccl" if config.use_gpu else "gloo",
    }


class DistributedLearner:
    """Owns the queue actor and the trainer thread; use as a context manager (it always shuts
    both down)."""

    def __init__(
        self,
        base_dir: str | Path,
        config: LearnerConfig,
        storage_dir: str | Path,
        *,
        name: str = "learner",
        registry: RegistryTarget | None = None,
        seed: int = 0,
        recompute_old: bool = True,
    ) -> None:
        """``recompute_old=False`` for offline logs: keep the batch's behaviour log-probs."""
        if config.max_staleness < config.checkpoint_every - 1:
            raise ValueError(  # batches are acknowledged (and published) at checkpoints only
                f"max_staleness {config.max_staleness} < checkpoint_every - 1: collection would "
                "wait for a checkpoint that needs the batch it has not submitted yet"
            )
        self.config = config
        self.storage_dir = Path(storage_dir).resolve()
        self.name = name
        self.store = CheckpointStore(self.storage_dir / name / "checkpoints")
        latest = self.store.latest()
        start = read_state(latest).cursor if latest is not None else 0
        self.queue = make_batch_queue(max_pending=config.max_staleness + 1, start=start)
        self.job = LearnerJob(
            str(base_dir), config, self.queue, str(self.store.root), registry, seed, recompute_old
        )
        self._next = start
        self._thread: threading.Thread | None = None
        self._result: Any = None
        self._error: BaseException | None = None
        self.fit_restarts = 0  # new fit() calls after a worker died while its group started

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> DistributedLearner:
        """Start the long-lived ``fit()`` (idempotent: ``with learner.start():`` starts once)."""
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._fit, name=f"{self.name}-fit", daemon=True)
        self._thread.start()
        return self

    def _trainer(self) -> Any:
        """A fresh Ray Train run (our checkpoint store holds the state, not Ray Train's)."""
        from ray.train import FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchConfig, TorchTrainer

        cfg = self.config
        scaling = scaling_options(cfg)
        stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{self.fit_restarts}"
        return TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"job": self.job},
            torch_config=TorchConfig(backend=scaling.pop("backend")),
            scaling_config=ScalingConfig(**scaling),
            run_config=RunConfig(
                name=f"{self.name}-{stamp}",
                storage_path=str(self.storage_dir / self.name / "ray_train"),
                failure_config=FailureConfig(
                    max_failures=cfg.max_failures, controller_failure_limit=0
                ),
            ),
        )

    def _fit(self) -> None:
        """The trainer thread: ``fit()``, and a new one after a ``ControllerError`` (a worker that
        died while its group was starting) while ``max_failures`` allows; any other end is kept
        for ``finish`` to re-raise on the driver's thread."""
        from ray.train import ControllerError

        while True:
            before = job_placement_groups()
            try:
                self._result = self._trainer().fit()
                return
            except ControllerError as exc:
                leaked = remove_placement_groups(job_placement_groups() - before)
                if self.fit_restarts >= self.config.max_failures:
                    self._error = exc
                    return
                self.fit_restarts += 1
                logger.warning(
                    "learner %s: the worker group failed while starting (%s; %d placement "
                    "groups it left removed); starting it again from the latest checkpoint "
                    "(%d/%d)",
                    self.name,
                    str(exc).splitlines()[0][:200],
                    leaked,
                    self.fit_restarts,
                    self.config.max_failures,
                )
            except BaseException as exc:  # re-raised on the driver's thread by ``finish``
                self._error = exc
                return

    def __enter__(self) -> DistributedLearner:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def finish(self, timeout_s: float = 600.0) -> Path:
        """Close the queue, let the workers drain it, and return the final checkpoint directory."""
        import ray

        ray.get(self.queue.close.remote())
        assert self._thread is not None, "start() first"
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise LearnerFailed(f"the learner did not finish within {timeout_s:.0f}s")
        self._raise_if_failed()
        return self.latest_checkpoint()

    def shutdown(self) -> None:
        """Stop everything this learner started (the trainer ends with the closed queue)."""
        import ray

        if self._thread is not None and self._thread.is_alive():
            ray.get(self.queue.close.remote())
            self._thread.join(120.0)
        ray.kill(self.queue)

    # -- data -------------------------------------------------------------------------------------

    def submit(
        self,
        batch: ReflectionBatch,
        collected_step: int | None = None,
        info: dict[str, float] | None = None,
        timeout_s: float = 600.0,
    ) -> int:
        """Queue a global batch (waiting for the staleness bound); its sequence number.

        ``collected_step``: learner steps in the adapter that sampled the batch. A batch sampled
        by an older adapter than the one it updates keeps its sampler log-probs as the PPO
        ratio's old log-probs (importance correction); ``None`` declares it on-policy."""
        import ray

        batch.check_shapes()
        if batch.batch_size < self.config.num_workers:
            raise ValueError(f"{batch.batch_size} rows for {self.config.num_workers} workers")
        self.wait_applied(self._next - self.config.max_staleness, timeout_s)
        deadline = time.monotonic() + timeout_s
        while (seq := ray.get(self.queue.put.remote(batch, collected_step, info))) is None:
            self._raise_if_failed()
            if time.monotonic() > deadline:
                raise TimeoutError("the learner queue stayed full")
            time.sleep(0.05)
        self._next = seq + 1
        return seq

    def wait_applied(self, cursor: int, timeout_s: float = 600.0) -> int:
        """Block until batches below ``cursor`` are applied and checkpointed; the cursor."""
        import ray

        deadline = time.monotonic() + timeout_s
        while (acked := ray.get(self.queue.wait_acked.remote(cursor, 1.0))) < cursor:
            self._raise_if_failed()
            if time.monotonic() > deadline:
                raise TimeoutError(f"batches below {cursor} not applied within {timeout_s:.0f}s")
        return acked

    # -- inspection -------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        import ray

        return ray.get(self.queue.state.remote())

    def metrics(self, since: int = 0) -> list[dict[str, float]]:
        import ray

        return ray.get(self.queue.recorded_metrics.remote(since))

    def latest_checkpoint(self) -> Path:
        latest = self.store.latest()
        if latest is None:
            raise FileNotFoundError(f"no learner checkpoint under {self.store.root}")
        return latest

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise LearnerFailed("the learner's trainer failed") from self._error
        if self._result is not None and getattr(self._result, "error", None) is not None:
            raise LearnerFailed("the learner's trainer failed") from self._result.error
        if self._thread is not None and not self._thread.is_alive() and self._result is None:
            raise LearnerFailed("the learner's trainer stopped")
