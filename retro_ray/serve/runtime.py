"""What one serving replica holds: an engine (vLLM or torch) and a bounded set of adapter versions.

Each version is loaded under its immutable name (``retro@3``), never reused, so an engine's
adapter cache can never serve a stale copy. At most ``max_loras`` versions are loaded; room is
made by unloading the least recently used version that no alias needs and no request is using.
A request holds its version (``using``) from start to finish, so a swap never pulls an adapter
from under a request in flight.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any, Protocol

from retro_ray.llm.base import Completion, SamplingParams
from retro_ray.llm.templates import Prompt

logger = logging.getLogger(__name__)


class Engine(Protocol):
    """What the torch and vLLM backends share."""

    tokenizer: Any

    async def generate(
        self, prompts: Sequence[Prompt], sampling: SamplingParams
    ) -> list[Completion]: ...
    async def load_adapter(self, name: str, path: str | Path) -> None: ...
    async def unload_adapter(self, name: str) -> None: ...
    async def shutdown(self) -> None: ...


class CapacityError(RuntimeError):
    """Every adapter slot is held by an alias or a request in flight (answered with a 503)."""


class ReplicaRuntime:
    def __init__(
        self,
        engine: Engine,
        adapter_path: Callable[[int], Path],
        version_name: Callable[[int], str],
        max_loras: int,
        capacity_wait_s: float = 30.0,
    ) -> None:
        """``adapter_path(v)`` returns version ``v``'s verified directory (it raises if the files
        changed since publish); ``version_name(v)`` its serving name."""
        self.engine = engine
        self.adapter_path = adapter_path
        self.version_name = version_name
        self.max_loras = max_loras
        self.capacity_wait_s = capacity_wait_s
        self._loaded: OrderedDict[int, None] = OrderedDict()  # least recently used first
        self._in_flight: Counter[int] = Counter()
        self._pinned: set[int] = set()  # versions an alias needs (the controller's ``wanted``)
        self._lock = asyncio.Lock()
        self._released = asyncio.Event()
        self.failed: dict[int, str] = {}

    @property
    def loaded(self) -> list[int]:
        return sorted(self._loaded)

    async def sync(self, wanted: Iterable[int]) -> None:
        """Pin and load ``wanted`` (version 0 is the base model: nothing to load), then unload
        versions nobody needs. A version that fails to load is kept in ``failed``, with why."""
        wanted = {v for v in wanted if v != 0}
        self._pinned = wanted
        for version in sorted(wanted):
            try:
                await self.ensure(version)
                self.failed.pop(version, None)
            except Exception as exc:
                self.failed[version] = f"{type(exc).__name__}: {exc}"
                logger.error("loading version %d failed: %s", version, exc)
        async with self._lock:
            for version in list(self._loaded):
                if version not in wanted and not self._in_flight[version]:
                    await self._unload(version)

    async def ensure(self, version: int) -> None:
        """Load ``version`` if it is not loaded, making room first."""
        if version == 0 or version in self._loaded:
            if version in self._loaded:
                self._loaded.move_to_end(version)
            return
        async with self._lock:
            if version in self._loaded:
                return
            await self._make_room()
            path = await asyncio.to_thread(self.adapter_path, version)
            await self.engine.load_adapter(self.version_name(version), path)
            self._loaded[version] = None
            logger.info("loaded %s", self.version_name(version))

    @asynccontextmanager
    async def using(self, version: int) -> AsyncIterator[str | None]:
        """Hold ``version`` for one request; yields the engine's adapter name (None: base)."""
        self._in_flight[version] += 1
        try:
            await self.ensure(version)
            yield self.version_name(version) if version else None
        finally:
            self._in_flight[version] -= 1
            if not self._in_flight[version]:
                del self._in_flight[version]
                self._released.set()

    async def generate(
        self, prompts: Sequence[Prompt], sampling: SamplingParams, version: int
    ) -> list[Completion]:
        async with self.using(version) as adapter:
            sampling = SamplingParams(**{**sampling.__dict__, "adapter": adapter})
            return await self.engine.generate(prompts, sampling)

    async def _make_room(self) -> None:
        """Unload LRU versions until one slot is free; waits for requests to release one."""
        waited = 0.0
        while len(self._loaded) >= self.max_loras:
            victim = next(
                (v for v in self._loaded if v not in self._pinned and not self._in_flight[v]),
                None,
            )
            if victim is not None:
                await self._unload(victim)
                continue
            if waited >= self.capacity_wait_s:
                raise CapacityError(f"all {self.max_loras} adapter slots are in use")
            self._released.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self._released.wait(), 0.5)
            waited += 0.5

    async def _unload(self, version: int) -> None:
        del self._loaded[version]  # first: a request arriving meanwhile reloads, never misses
        await self.engine.unload_adapter(self.version_name(version))
        logger.info("unloaded %s", self.version_name(version))
