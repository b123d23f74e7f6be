"""The learner's per-batch metrics: one flat ``dict[str, float]`` per applied batch.

Fields: ``loss``, ``pg_loss``, ``kl_ref`` (when the reference is computed), ``grad_norm``,
``reward_mean`` / ``advantage_mean`` / ``advantage_std`` / ``zero_signal_group_share`` (from the
collection stats the batch was queued with), ``tokens`` (the global loss-token count),
``tokens_per_s`` (global tokens over this worker's update time), ``update_time_s``,
``queue_wait_s`` (from queueing to the start of its update), ``staleness`` (learner steps between
the adapter that sampled the batch and the weights it updated: 0 is on-policy) and ``cursor``.

Rank 0 records them in the queue actor (the driver reads them back) and passes them to
``ray.train.report``; :class:`LearnerGauges` also exports the main ones as Prometheus gauges.
"""

from __future__ import annotations

from typing import Any

from retro_ray.learner.queue import QueuedBatch

EXPORTED = ("loss", "reward_mean", "zero_signal_group_share", "grad_norm", "tokens_per_s")


def batch_metrics(
    update: dict[str, float], item: QueuedBatch, cursor: int, world_size: int, now: float
) -> dict[str, float]:
    """Merge the update's metrics with the batch's provenance and timing."""
    seconds = update.get("update_time_s", 0.0)
    metrics = {k: float(v) for k, v in update.items()}
    metrics.update({k: float(v) for k, v in item.info.items() if k not in metrics})
    metrics.update(
        cursor=float(cursor),
        staleness=float(cursor - item.collected_step),
        queue_wait_s=max(0.0, now - seconds - item.put_at),
        tokens_per_s=update.get("tokens", 0.0) / seconds if seconds > 0 else 0.0,
        world_size=float(world_size),
    )
    return metrics


class LearnerGauges:
    """Prometheus gauges (``ray.util.metrics``) of the latest batch, set from the driver."""

    def __init__(self, run: str) -> None:
        from ray.util.metrics import Gauge

        self.run = run
        self.gauges: dict[str, Any] = {
            name: Gauge(f"retro_ray_learner_{name}", f"learner {name}", tag_keys=("run",))
            for name in EXPORTED
        }

    def set(self, metrics: dict[str, float]) -> None:
        for name, gauge in self.gauges.items():
            if name in metrics:
                gauge.set(metrics[name], tags={"run": self.run})
