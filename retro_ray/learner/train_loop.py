"""The worker side of the distributed learner: the loop each Ray Train worker runs inside one
long-lived ``TorchTrainer.fit()`` (started by :mod:`retro_ray.learner.distributed`), pulling
numbered batches from a :class:`~retro_ray.learner.queue.BatchQueue` actor.

Every worker holds a :class:`~retro_ray.learner.policy.ReflectorPolicy` (the plain class does the
work) and reads the same global batch; worker ``r`` of ``W`` trains on its ``r``-th share of the
rows. The update equals one worker's on the whole batch because (a) the loss normaliser is the
*global* count (``normalizer_count`` all-reduced with SUM), and (b) the LoRA gradients are summed
(one flat all-reduce) rather than averaged, so each worker's masked-sum loss over its shard adds
up to the whole batch's. Every worker then clips and steps identically. (DDP would average, and the
normaliser would have to be ``Z / W``; a manual reduction over the few LoRA tensors is simpler and
needs no wrapper around the peft model.) gloo on CPU, NCCL and bf16 autocast on GPU.

Per batch: update, then the metrics to the queue actor (``ray.train.report`` only every
``REPORT_EVERY`` batches, see there). Every ``checkpoint_every`` batches rank 0 writes a checkpoint
(adapter, optimizer, cursor) into the learner's
:class:`~retro_ray.learner.checkpoint.CheckpointStore`, then publishes the adapter to the registry
as the ``train`` alias (so every served adapter is durable), then acknowledges the cursor to the
queue. A crashed worker makes Ray Train restart the group (``FailureConfig``); the new workers
restore the store's latest checkpoint (rank 0 picks it, all load the same) and ask the queue for
the batch at its cursor, which is still queued because only checkpointed batches are acknowledged.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from retro_ray.algo import ReflectionBatch
from retro_ray.config import LearnerConfig
from retro_ray.learner.checkpoint import (
    ADAPTER_DIR,
    CheckpointStore,
    LearnerState,
    learner_config_hash,
    load_checkpoint,
)
from retro_ray.learner.metrics import batch_metrics
from retro_ray.learner.policy import ReflectorPolicy, recompute_old_logprobs
from retro_ray.learner.queue import QueuedBatch

POLL_S = 1.0  # how long a worker waits in the queue before asking again
REPORT_EVERY = 50
"""Batches between ``ray.train.report`` calls. Train V2 hands each report to its controller, which
collects them on its health-check poll (every 2 s by default), and a report blocks until the
previous one was collected: reporting every batch added ~2 s per batch here (measured: update
0.03 s, report 1.7-2 s). Per-batch metrics go to the queue actor instead; the workers stay in step
through the gradient all-reduce, not through the report barrier. A count, not a clock, so that
every rank makes the same calls."""


@dataclass(frozen=True)
class RegistryTarget:
    """Where rank 0 publishes adapters (``retro_ray.registry.AdapterRegistry``)."""

    root: str
    name: str = "retro"
    max_lora_rank: int = 16


@dataclass(frozen=True)
class LearnerJob:
    """Everything a worker needs (pickled into ``train_loop_config``)."""

    base_dir: str
    config: LearnerConfig
    queue: Any  # BatchQueue actor handle
    checkpoint_dir: str  # CheckpointStore root (shared storage on a multi-node cluster)
    registry: RegistryTarget | None = None
    seed: int = 0  # LoRA init: the same on every worker (and as in a single-process run)
    recompute_old: bool = True  # online: stale batches keep the sampler's (``apply_batch``);
    # False offline: the log's log-probs are the behaviour policy's


# ---------------------------------------------------------------------------------------------
# Worker side
# ---------------------------------------------------------------------------------------------


class TorchDistSync:
    """:class:`~retro_ray.learner.policy.GradSync` over ``torch.distributed`` (SUM)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def all_reduce_sum(self, tensor: torch.Tensor) -> None:
        import torch.distributed as dist

        moved = tensor.to(self.device)
        dist.all_reduce(moved, op=dist.ReduceOp.SUM)
        tensor.copy_(moved)

    def all_reduce_grads(self, params: list[torch.nn.Parameter]) -> None:
        """One flat all-reduce for all LoRA gradients (many tiny tensors: one call, not 100s)."""
        import torch.distributed as dist

        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for p, g in zip(params, grads, strict=True):
            p.grad = flat[offset : offset + g.numel()].view_as(g).clone()
            offset += g.numel()


def shard(batch: ReflectionBatch, rank: int, world_size: int) -> ReflectionBatch:
    """Worker ``rank``'s rows: contiguous, near-equal shares (``tensor_split`` order)."""
    if batch.batch_size < world_size:
        raise ValueError(f"a batch of {batch.batch_size} rows cannot feed {world_size} workers")
    return batch.select(torch.arange(batch.batch_size).tensor_split(world_size)[rank])


def _next_batch(queue: Any, seq: int) -> QueuedBatch | None:
    import ray

    while True:
        item = ray.get(queue.get.remote(seq, POLL_S))
        if item == "end":
            return None
        if isinstance(item, QueuedBatch):
            return item


def publish_adapter(
    policy: ReflectorPolicy, job: LearnerJob, step: int, saved: Path | None = None
) -> int:
    """Publish the adapter to the registry as ``train``; its version. ``saved``: the adapter
    directory of the checkpoint just written from these weights, published as it is (no second
    save); without it (the in-process learner keeps no checkpoint) the adapter is saved first."""
    from retro_ray.registry import TRAIN_ALIAS, AdapterRegistry

    target = job.registry
    assert target is not None
    registry = AdapterRegistry(target.root, job.base_dir, target.name, target.max_lora_rank)
    config_hash = learner_config_hash(job.config, job.base_dir)
    if saved is not None:  # the checkpoint refused non-finite weights before writing them
        meta = registry.publish(saved, step=step, config_hash=config_hash, alias=TRAIN_ALIAS)
        return meta.version
    policy.check_finite("published")  # before anything is written: serving must never load it
    with tempfile.TemporaryDirectory() as tmp:
        policy.save_adapter(tmp)
        meta = registry.publish(tmp, step=step, config_hash=config_hash, alias=TRAIN_ALIAS)
    return meta.version


def apply_batch(
    policy: ReflectorPolicy,
    job: LearnerJob,
    item: QueuedBatch,
    cursor: int,
    rank: int = 0,
    world: int = 1,
    sync: TorchDistSync | None = None,
) -> dict[str, float]:
    """Train on this rank's shard of batch ``item`` (applied at ``cursor``); its metrics.

    Old log-probs: a batch sampled by an older adapter than these weights (``train.overlap``)
    keeps the sampler's, so the PPO ratio corrects for the staleness; an on-policy one has them
    recomputed (:func:`~retro_ray.learner.policy.recompute_old_logprobs`); offline jobs
    (``recompute_old=False``) always keep the log's."""
    staleness = cursor - item.collected_step
    recompute = job.recompute_old and recompute_old_logprobs(item.batch, staleness)
    device = next(policy.model.parameters()).device
    mine = shard(item.batch, rank, world).to(device)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
        update = policy.update(mine, sync=sync, recompute_old=recompute)
    return batch_metrics(update, item, cursor, world, time.time())


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """One worker of the long-lived ``fit()``: restore, then pull, update, report, until the
    queue is closed and drained."""
    import ray
    import ray.train
    import ray.train.torch

    job: LearnerJob = loop_config["job"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        threads = job.config.torch_threads or int(os.environ.get("OMP_NUM_THREADS", "1"))
        torch.set_num_threads(threads)
    policy = ReflectorPolicy(job.base_dir, job.config, seed=job.seed)
    policy.model.to(device)
    sync = TorchDistSync(device) if world > 1 else None
    store = CheckpointStore(job.checkpoint_dir)
    config_hash = learner_config_hash(job.config, job.base_dir)
    state = LearnerState(cursor=0, steps=0, version=0, config_hash=config_hash)
    restored = _agreed_cursor(store, sync, device)  # every rank restores the same checkpoint
    if restored is not None:
        state = load_checkpoint(store.path(restored), policy, config_hash)
    ray.get(job.queue.register_worker.remote(rank, os.getpid()))
    version = state.version
    if rank == 0 and restored is not None:  # a restart: re-serve and re-acknowledge the state
        saved = store.path(restored) / ADAPTER_DIR
        version = publish_adapter(policy, job, state.cursor, saved) if job.registry else version
        ray.get(job.queue.ack.remote(state.cursor, version or None))
    cursor = saved_at = state.cursor

    waited = time.monotonic()
    while (item := _next_batch(job.queue, cursor)) is not None:
        if item.seq != cursor:
            raise RuntimeError(f"queue returned batch {item.seq} for cursor {cursor}")
        fetched = time.monotonic()
        metrics = apply_batch(policy, job, item, cursor, rank, world, sync)
        cursor += 1
        committed = time.monotonic()
        if cursor - saved_at >= job.config.checkpoint_every:
            version = _commit(policy, job, store, rank, cursor, version, config_hash)
            saved_at = cursor
        reported = time.monotonic()
        if cursor % REPORT_EVERY == 0:
            ray.train.report(metrics)
        metrics.update(  # where a batch's wall time goes, besides the update itself
            torch_threads=float(torch.get_num_threads()),
            fetch_s=fetched - waited,
            commit_s=reported - committed,
            report_s=time.monotonic() - reported,
        )
        if rank == 0:
            ray.get(job.queue.record.remote({**metrics, "version": float(version)}))
        waited = time.monotonic()
    if cursor != saved_at:  # the tail after the last periodic checkpoint
        _commit(policy, job, store, rank, cursor, version, config_hash)
    ray.train.report({"cursor": float(cursor), "steps": float(policy.steps)})


def _commit(
    policy: ReflectorPolicy,
    job: LearnerJob,
    store: CheckpointStore,
    rank: int,
    cursor: int,
    version: int,
    config_hash: str,
) -> int:
    """Rank 0: checkpoint (renamed into place), then publish as ``train``, then acknowledge: a
    batch is acknowledged only once weights holding it are durable. The registry version."""
    if rank != 0:
        return version
    state = LearnerState(cursor, policy.steps, version, config_hash, policy.nonfinite_skipped)
    saved = store.write(policy, state)  # refuses NaN/inf weights: a restart must not restore them
    if job.registry is not None:
        version = publish_adapter(policy, job, cursor, saved / ADAPTER_DIR)
    import ray

    ray.get(job.queue.ack.remote(cursor, version or None))
    return version


def _agreed_cursor(
    store: CheckpointStore, sync: TorchDistSync | None, device: torch.device
) -> int | None:
    """Rank 0's latest checkpoint cursor, broadcast (the ranks must restore the same one)."""
    latest = store.cursors()[-1] if store.cursors() else -1
    if sync is not None:
        import torch.distributed as dist

        value = torch.tensor([latest], dtype=torch.long, device=device)
        dist.broadcast(value, src=0)
        latest = int(value.item())
    return None if latest < 0 else latest
