"""The learner's per-batch metrics: one flat ``dict[str, float]`` per applied batch.

Fields: ``loss``, ``pg_loss``, ``kl_ref`` (when the reference is computed), ``grad_norm``,
``reward_mean`` / ``advantage_mean`` / ``advantage_std`` / ``zero_signal_group_share`` (from the
collection stats the batch was queued with), ``tokens`` (the global loss-token count),
``tokens_per_s`` (global tokens over this worker's update time), ``update_time_s``,
``queue_wait_s`` (from queueing to the start of its update), ``staleness`` (learner steps between
the adapter that sampled the batch and the weights it updated: 0 is on-policy),
``old_logprobs_from_sampler`` (1: the PPO ratio's old log-probs were the sampler's, the
importance correction of a stale batch; 0: recomputed by the learner), ``nonfinite_skipped`` and
``nonfinite_skipped_total`` (optimizer steps skipped for a NaN/inf loss or gradient norm, in this
batch and since the start) and ``cursor``.

Rank 0 records them in the queue actor (the driver reads them back) and passes them to
``ray.train.report``; :class:`LearnerGauges` also exports the main ones as Prometheus gauges.
"""

from __future__ import annotations

from typing import Any

from retro_ray.learner.queue import QueuedBatch

EXPORTED = {
    # Prometheus gauge name (after ``retro_ray_learner_``) -> key of the batch metrics.
    "loss": "loss",
    "kl": "kl_ref",
    "reward_mean": "reward_mean",
    "zero_signal_groups": "zero_signal_group_share",
    "grad_norm": "grad_norm",
    "clip_fraction": "clip_frac",
    "staleness": "staleness",
    "tokens_per_s": "tokens_per_s",
    "adapter_version": "adapter_version",
}
"""What the Grafana dashboard's learner panels query (``dashboards/grafana_retro_ray.json``)."""


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
    """Prometheus gauges (``ray.util.metrics``) of the latest batch, set from the driver, and a
    counter of applied updates (``retro_ray_learner_updates_total``)."""

    def __init__(self, run: str) -> None:
        from ray.util.metrics import Counter, Gauge

        self.run = run
        self.gauges: dict[str, Any] = {
            name: Gauge(f"retro_ray_learner_{name}", f"learner {name}", tag_keys=("run",))
            for name in EXPORTED
        }
        self.updates = Counter(
            "retro_ray_learner_updates", "learner updates applied", tag_keys=("run",)
        )

    def set(self, metrics: dict[str, float]) -> None:
        """Export one applied batch's metrics (missing keys are left as they were)."""
        tags = {"run": self.run}
        for name, key in EXPORTED.items():
            if key in metrics:
                self.gauges[name].set(float(metrics[key]), tags=tags)
        self.updates.inc(1.0, tags=tags)
