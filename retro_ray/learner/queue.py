"""The learner's batch queue: numbered batches between collection (the driver) and the long-lived
Ray Train workers, with an acknowledged cursor that makes each batch count exactly once.

Why a queue actor and not ``fit()`` per batch: under Train V2 every ``fit()`` spawns a new worker
group (tens of seconds on 2 cores), and ``ray.train.report`` is a barrier, so the workers of one
long-lived ``fit()`` pull their batches from here instead.

Exactly once, across learner crashes:

- ``put`` gives every global batch the next sequence number (0, 1, 2, ...). Every data-parallel
  worker reads the *same* batch ``seq`` and trains on its own shard of rows.
- Workers ask for a batch *by number* (their cursor, restored from the checkpoint), so the queue
  never guesses who consumed what: a restarted worker group asks again for the first batch after
  its checkpoint.
- A batch is dropped only when acknowledged: rank 0 calls ``ack(cursor)`` after the checkpoint
  holding ``cursor`` was reported. Batches applied after the last checkpoint but lost with a
  crashed worker are still here, and are applied again onto the restored weights: lost from
  nothing, applied once in the weights that survive.
- ``committed`` lists every acknowledged sequence number once, in order; an acknowledgement that
  would skip or repeat one is recorded in ``violations`` (the fault-tolerance test reads both).

Backpressure (the staleness bound): ``put`` refuses (returns ``None``) while ``max_pending``
batches are waiting, so collection never runs more than that many updates ahead of the learner.

A plain class; :func:`make_batch_queue` makes it a Ray actor at the edge. Methods are ``async``
so that a worker blocked in ``get`` does not block ``put`` on the same actor.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from retro_ray.algo import ReflectionBatch


@dataclass(frozen=True)
class QueuedBatch:
    """One global batch and where it came from."""

    seq: int
    batch: ReflectionBatch
    collected_step: int  # learner steps (batches applied) in the adapter that sampled it (0: base)
    put_at: float  # time.time() when queued (queue latency is reported by the learner)
    info: dict[str, float] = field(default_factory=dict)  # collection stats (mean reward, ...)


class BatchQueue:
    """Numbered global batches, kept until acknowledged. See the module docstring."""

    def __init__(self, max_pending: int = 2, start: int = 0) -> None:
        """``start``: the cursor of the checkpoint a restarted driver resumes from."""
        self.max_pending = max_pending
        self._items: dict[int, QueuedBatch] = {}
        self._next_seq = start
        self._acked = start  # every batch below this number is in a reported checkpoint
        self._closed = False
        self._changed = asyncio.Condition()
        self.committed: list[int] = []
        self.violations: list[str] = []
        self.version = 0  # latest adapter version the learner published
        self.workers: list[tuple[int, int, float]] = []  # (rank, pid, time) per worker start
        self.metrics: list[dict[str, float]] = []

    # -- collection side ----------------------------------------------------------------------

    async def put(
        self,
        batch: ReflectionBatch,
        collected_step: int | None = None,
        info: dict[str, float] | None = None,
    ) -> int | None:
        """Queue a global batch; its sequence number, or ``None`` while ``max_pending`` wait.

        ``collected_step``: learner steps in the adapter that sampled it; ``None``: the weights it
        will update (the caller vouches that it is on-policy, staleness 0)."""
        async with self._changed:
            if self._closed:
                raise RuntimeError("the batch queue is closed")
            if self.pending() >= self.max_pending:
                return None
            seq = self._next_seq
            step = seq if collected_step is None else collected_step
            self._items[seq] = QueuedBatch(seq, batch, step, time.time(), info or {})
            self._next_seq += 1
            self._changed.notify_all()
            return seq

    async def close(self) -> None:
        """No more batches: workers finish once they have consumed every queued one."""
        async with self._changed:
            self._closed = True
            self._changed.notify_all()

    def pending(self) -> int:
        """Batches queued but not yet acknowledged."""
        return self._next_seq - self._acked

    async def wait_acked(self, cursor: int, timeout_s: float = 1.0) -> int:
        """The acknowledged cursor once it reaches ``cursor``, or after ``timeout_s`` (callers
        loop, checking their trainer's health in between)."""
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self._acked >= cursor), timeout_s
                )
            return self._acked

    # -- learner side -------------------------------------------------------------------------

    async def get(self, seq: int, timeout_s: float = 1.0) -> QueuedBatch | str:
        """Batch ``seq``; ``"wait"`` when it is not queued yet (ask again), ``"end"`` when the
        queue is closed and ``seq`` is past the last batch. A short timeout lets a worker check
        in often, so a crash elsewhere in its group is noticed."""
        async with self._changed:
            try:
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: seq in self._items or self._closed), timeout_s
                )
            except TimeoutError:
                return "wait"
            if seq in self._items:
                return self._items[seq]
            if seq < self._acked:
                raise KeyError(f"batch {seq} was already acknowledged (cursor {self._acked})")
            return "end" if self._closed and seq >= self._next_seq else "wait"

    async def ack(self, cursor: int, version: int | None = None) -> None:
        """Batches below ``cursor`` are in a reported checkpoint: drop them. Idempotent (a
        restarted rank 0 re-acknowledges its checkpoint's cursor)."""
        async with self._changed:
            if cursor > self._next_seq:
                self.violations.append(f"ack({cursor}) past the last batch {self._next_seq - 1}")
            for seq in range(self._acked, cursor):
                if self.committed and seq != self.committed[-1] + 1:
                    self.violations.append(f"ack skips to {seq} after {self.committed[-1]}")
                self.committed.append(seq)
                self._items.pop(seq, None)
            self._acked = max(self._acked, cursor)
            if version is not None:
                self.version = max(self.version, version)
            self._changed.notify_all()

    async def register_worker(self, rank: int, pid: int) -> None:
        self.workers.append((rank, pid, time.time()))

    async def record(self, metrics: dict[str, float]) -> None:
        """Per-batch learner metrics (rank 0), read by the driver and the benchmarks."""
        self.metrics.append(metrics)

    # -- inspection ---------------------------------------------------------------------------

    async def state(self) -> dict[str, Any]:
        return {
            "next_seq": self._next_seq,
            "acked": self._acked,
            "closed": self._closed,
            "committed": list(self.committed),
            "violations": list(self.violations),
            "version": self.version,
            "workers": list(self.workers),
        }

    async def recorded_metrics(self, since: int = 0) -> list[dict[str, float]]:
        return self.metrics[since:]


def make_batch_queue(max_pending: int = 2, start: int = 0, name: str | None = None) -> Any:
    """The queue as a Ray actor (no CPU reserved: it only holds references and answers calls).

    ``max_restarts=0``: the queue is the source of truth for the cursor while the run lives; the
    driver owns it, and a driver restart resumes from the learner's checkpoint instead. So it runs
    on the driver's node (hard affinity), sharing the driver's fate and no other node's: placed on
    a worker node, the loss of that node would take the queue, and with it the learner, while the
    driver lives on."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    driver_node = ray.get_runtime_context().get_node_id()
    options: dict[str, Any] = {
        "num_cpus": 0,
        "max_concurrency": 64,
        "scheduling_strategy": NodeAffinitySchedulingStrategy(driver_node, soft=False),
    }
    if name is not None:
        options["name"] = name
    return ray.remote(BatchQueue).options(**options).remote(max_pending, start)
