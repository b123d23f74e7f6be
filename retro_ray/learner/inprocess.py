"""The learner in the driver's process: the same update and publication as the distributed
learner's, without Ray.

:class:`InProcessLearner` has the part of :class:`~retro_ray.learner.distributed.DistributedLearner`
that the training loop (``retro_ray.driver.loop``) uses: ``submit`` a batch, ``wait_applied``,
``state`` (the cursor of applied batches) and ``metrics`` (one record per batch, the same fields).
A batch is applied when it is submitted, by the worker's own code
(:func:`~retro_ray.learner.train_loop.apply_batch` on a
:class:`~retro_ray.learner.policy.ReflectorPolicy`), then the adapter is published to the registry
as ``train`` (:func:`~retro_ray.learner.train_loop.publish_adapter`), as the distributed learner
does after each checkpoint. It keeps no checkpoint: an in-process run (the learning proof) starts
from the base adapter in a fresh directory and is not resumed.
"""

from __future__ import annotations

import time
from typing import Any

from retro_ray.algo import ReflectionBatch
from retro_ray.learner.policy import ReflectorPolicy
from retro_ray.learner.queue import QueuedBatch
from retro_ray.learner.train_loop import LearnerJob, RegistryTarget, apply_batch, publish_adapter


class InProcessLearner:
    """Applies each submitted batch at once on ``policy`` and publishes it to ``registry``."""

    def __init__(
        self, policy: ReflectorPolicy, base_dir: str, registry: RegistryTarget | None = None
    ) -> None:
        self.policy = policy
        self.job = LearnerJob(
            base_dir=str(base_dir),
            config=policy.config,
            queue=None,  # no queue: batches are applied as they are submitted
            checkpoint_dir="",  # no checkpoints: see the module docstring
            registry=registry,
        )
        self.cursor = 0  # batches applied
        self.version = 0  # the registry version of the latest publication (0: the base)
        self._metrics: list[dict[str, float]] = []

    def submit(
        self,
        batch: ReflectionBatch,
        collected_step: int | None = None,
        info: dict[str, float] | None = None,
    ) -> int:
        """Apply ``batch`` now and publish the adapter; its sequence number."""
        batch.check_shapes()
        seq = self.cursor
        step = seq if collected_step is None else collected_step
        item = QueuedBatch(seq, batch, step, time.time(), dict(info or {}))
        metrics = apply_batch(self.policy, self.job, item, seq)
        self.cursor += 1
        if self.job.registry is not None:
            self.version = publish_adapter(self.policy, self.job, self.cursor)
        self._metrics.append({**metrics, "version": float(self.version)})
        return seq

    def wait_applied(self, cursor: int, timeout_s: float = 600.0) -> int:
        """Every submitted batch is applied already; the cursor."""
        if cursor > self.cursor:
            raise ValueError(f"batch {cursor - 1} was never submitted (cursor {self.cursor})")
        return self.cursor

    def state(self) -> dict[str, Any]:
        return {"acked": self.cursor, "version": self.version}

    def metrics(self, since: int = 0) -> list[dict[str, float]]:
        return self._metrics[since:]
