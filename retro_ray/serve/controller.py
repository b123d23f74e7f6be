"""The serving alias table and the two-phase hot-swap, decided in one place.

Phase 1 (prepare): a new alias table arrives (the registry's revision changed). Its versions join
the ``wanted`` set; every replica long-polls ``wait_for_work``, loads what it lacks while it keeps
serving, and reports. Phase 2 (flip): once every live replica holds every wanted version, the
served table is replaced in one step and the epoch grows. If a replica fails to load, or the
swap times out, the old table keeps serving and the failure is kept with its reason: which
replica, which version, the error (``failure`` in :meth:`AliasController.table`).

Retries: a failed revision is tried again (:class:`RegistryWatcher`) after an exponential backoff
(``retry_backoff_s``, doubled each time, at most ``max_backoff_s``), up to ``max_attempts`` times;
then the controller gives up on it (``failure.gave_up``) until the registry changes. A transient
fault (a file briefly unreadable, a replica restarting) heals by itself; a permanent one is
reported, and the driver waiting for the swap stops with its reason instead of waiting.

Monotone versions: replicas resolve a requested model (``prod``, ``train``, ``retro@3``) here,
once per request, so every replica sees the same table at the same moment. A request resolved
after another one sees the same or a newer table, and publish/promote only move aliases forward;
only an explicit rollback moves one back (the epoch still grows). A request keeps the version it
resolved until it finishes (the replica counts in-flight requests per version and never unloads
a version in use).

A plain asyncio class: Ray makes it an actor at the edge (``retro_ray.serve.app``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from retro_ray.registry import ALIASES, PROD_ALIAS, RegistryState

logger = logging.getLogger(__name__)


class ModelNotFound(KeyError):
    """The requested model is neither the base model, an alias, nor a published version."""


@dataclass(frozen=True)
class Resolution:
    version: int  # 0: the base model without adapter
    model: str  # the name responses carry: "retro@3", or the base model's name
    epoch: int


@dataclass
class _Replica:
    last_seen: float
    loaded: set[int] = field(default_factory=set)
    failed: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SwapResult:
    ok: bool
    revision: int
    aliases: dict[str, int]
    seconds: float
    reason: str = ""


@dataclass(frozen=True)
class SwapFailure:
    """The newest registry revision that could not be served (cleared by a successful swap)."""

    revision: int
    aliases: dict[str, int]  # the alias table it asked for
    attempts: int
    reason: str  # the last attempt's: "replica <id>: version <v>: <error>", or a timeout
    gave_up: bool  # no more attempts until the registry changes
    retry_in_s: float  # backoff before the next attempt (0 once given up)


class AliasController:
    def __init__(
        self,
        adapter_name: str,
        base_model_name: str,
        swap_timeout_s: float = 120.0,
        replica_ttl_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.adapter_name = adapter_name
        self.base_model_name = base_model_name
        self.swap_timeout_s = swap_timeout_s
        self.replica_ttl_s = replica_ttl_s
        self._clock = clock
        self.served: dict[str, int] = {}
        self.epoch = 0
        self.revision = -1  # registry revision the served table reflects
        self.known_versions: set[int] = set()
        self.wanted: set[int] = set()
        self.generation = 0  # grows whenever ``wanted`` changes
        self._replicas: dict[str, _Replica] = {}
        self._changed = asyncio.Condition()
        self.swaps: list[SwapResult] = []
        self.failure: SwapFailure | None = None  # set by the watcher, cleared by a good swap

    # -- replicas -----------------------------------------------------------------------------

    def register(self, replica_id: str) -> tuple[int, list[int]]:
        """A starting replica: it loads the returned versions before it takes traffic."""
        self._replicas[replica_id] = _Replica(self._clock())
        return self.generation, sorted(self.wanted)

    async def wait_for_work(
        self, replica_id: str, generation: int, timeout_s: float = 1.0
    ) -> tuple[int, list[int]]:
        """Long poll (doubles as the heartbeat): returns at once if ``wanted`` changed since
        ``generation``, else after ``timeout_s`` or the next change."""
        self._seen(replica_id)
        if generation == self.generation:
            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._changed.wait_for(lambda: generation != self.generation), timeout_s
                    )
        self._seen(replica_id)
        return self.generation, sorted(self.wanted)

    async def report(
        self, replica_id: str, loaded: list[int], failed: dict[int, str] | None = None
    ) -> None:
        replica = self._seen(replica_id)
        replica.loaded, replica.failed = set(loaded), dict(failed or {})
        await self._notify(bump=False)

    def unregister(self, replica_id: str) -> None:
        self._replicas.pop(replica_id, None)

    def live_replicas(self) -> dict[str, set[int]]:
        now = self._clock()
        return {
            rid: r.loaded
            for rid, r in self._replicas.items()
            if now - r.last_seen <= self.replica_ttl_s
        }

    # -- requests -----------------------------------------------------------------------------

    def resolve(self, model: str) -> Resolution:
        """The version a request for ``model`` runs on, from the served table."""
        if model == self.base_model_name:
            return Resolution(0, self.base_model_name, self.epoch)
        if model in (self.adapter_name, *ALIASES):
            version = self.served.get(PROD_ALIAS if model == self.adapter_name else model, 0)
        else:
            head, _, tail = model.partition("@")
            if head != self.adapter_name or not tail.isdigit():
                raise ModelNotFound(model)
            version = int(tail)
            if version != 0 and version not in self.known_versions:
                raise ModelNotFound(model)
        return Resolution(version, f"{self.adapter_name}@{version}", self.epoch)

    def lookup(self, model: str) -> Resolution | None:
        """``resolve`` for remote callers: None instead of an exception for unknown models."""
        try:
            return self.resolve(model)
        except ModelNotFound:
            return None

    def table(self) -> dict[str, object]:
        return {
            "aliases": dict(self.served),
            "epoch": self.epoch,
            "revision": self.revision,
            "versions": sorted(self.known_versions),
            "replicas": {rid: sorted(v) for rid, v in self.live_replicas().items()},
            "failure": dataclasses.asdict(self.failure) if self.failure else None,
        }

    # -- the swap -----------------------------------------------------------------------------

    async def apply(self, state: RegistryState) -> SwapResult:
        """Two-phase swap to the registry's alias table ``state``."""
        began = self._clock()
        self.known_versions = set(state.versions)
        target = {a: v for a, v in state.aliases.items() if a in ALIASES}
        needed = set(target.values())
        for replica in self._replicas.values():  # an earlier attempt's failures: try afresh
            replica.failed = {v: why for v, why in replica.failed.items() if v not in needed}
        self.wanted = set(self.served.values()) | needed
        await self._notify(bump=True)
        reason = await self._wait_loaded(needed)
        if reason:
            self.wanted = set(self.served.values())
            await self._notify(bump=True)
            result = SwapResult(False, state.revision, target, self._clock() - began, reason)
            logger.info("hot-swap to revision %d failed: %s", state.revision, reason)
        else:
            self.served, self.revision = target, state.revision
            self.failure = None
            self.epoch += 1
            self.wanted = needed
            await self._notify(bump=True)
            result = SwapResult(True, state.revision, target, self._clock() - began)
            logger.info("serving %s (epoch %d)", target, self.epoch)
        self.swaps.append(result)
        return result

    async def _wait_loaded(self, needed: set[int]) -> str:
        """'' once every live replica holds ``needed``; else why not."""
        deadline = self._clock() + self.swap_timeout_s
        async with self._changed:
            while True:
                live = self.live_replicas()
                failures = [
                    f"replica {rid}: version {v}: {why}"
                    for rid, r in self._replicas.items()
                    if rid in live
                    for v, why in r.failed.items()
                    if v in needed
                ]
                if failures:
                    return "; ".join(failures)
                if all(needed <= loaded for loaded in live.values()):
                    return ""
                left = deadline - self._clock()
                if left <= 0:
                    return f"replicas did not load {sorted(needed)} within {self.swap_timeout_s}s"
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), min(left, 0.5))

    def _seen(self, replica_id: str) -> _Replica:
        replica = self._replicas.setdefault(replica_id, _Replica(self._clock()))
        replica.last_seen = self._clock()
        return replica

    async def _notify(self, bump: bool) -> None:
        async with self._changed:
            if bump:
                self.generation += 1
            self._changed.notify_all()


class RegistryWatcher:
    """Polls the registry's alias table and hands each new revision to the controller, one at
    a time (a burst of publishes coalesces into the latest). A failed revision is retried with
    exponential backoff, at most ``max_attempts`` times (see the module docstring)."""

    def __init__(
        self,
        controller: AliasController,
        read_state: Callable[[], RegistryState],
        interval_s: float,
        *,
        retry_backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        max_attempts: int = 8,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.controller = controller
        self.read_state = read_state
        self.interval_s = interval_s
        self.retry_backoff_s = retry_backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_attempts = max_attempts
        self._clock = clock
        self._attempted = -1  # the revision being tried
        self._attempts = 0  # attempts at it so far
        self._retry_at = 0.0

    def backoff_s(self, attempts: int) -> float:
        """Pause after the ``attempts``-th failed attempt: doubling, capped."""
        return min(self.retry_backoff_s * 2 ** (attempts - 1), self.max_backoff_s)

    async def step(self) -> SwapResult | None:
        """Apply the registry's revision if it is new, or due for a retry; the attempt's result
        (None: nothing to do)."""
        state = await asyncio.to_thread(self.read_state)
        self.controller.known_versions = set(state.versions)
        if state.revision == self.controller.revision:
            return None
        if state.revision != self._attempted:  # a new revision: a fresh series of attempts
            self._attempted, self._attempts = state.revision, 0
        elif self._attempts >= self.max_attempts or self._clock() < self._retry_at:
            return None
        self._attempts += 1
        result = await self.controller.apply(state)
        if not result.ok:
            self._record_failure(result)
        return result

    def _record_failure(self, result: SwapResult) -> None:
        gave_up = self._attempts >= self.max_attempts
        delay = 0.0 if gave_up else self.backoff_s(self._attempts)
        self._retry_at = self._clock() + delay
        self.controller.failure = SwapFailure(
            result.revision, result.aliases, self._attempts, result.reason, gave_up, delay
        )
        then = "giving up until the registry changes" if gave_up else f"retrying in {delay:.1f}s"
        logger.warning(
            "hot-swap to revision %d failed (attempt %d of %d): %s; %s",
            result.revision,
            self._attempts,
            self.max_attempts,
            result.reason,
            then,
        )

    async def run(self) -> None:
        while True:
            try:
                await self.step()
            except Exception:  # a half-written registry or a transient error: try again
                logger.exception("registry watch failed")
            await asyncio.sleep(self.interval_s)
