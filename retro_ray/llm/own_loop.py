"""A backend whose coroutines all run on one event loop of its own, in a daemon thread.

vLLM's ``AsyncLLM`` binds its output handler to the event loop of its first request, while
in-process callers bring a new loop each time (the local collector runs each collection with
``asyncio.run``, the in-process hot-swap too). :class:`OwnLoopBackend` forwards every call to its
own loop and awaits the result on the caller's, so one engine serves them all.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from retro_ray.llm.base import ChatMessage, Completion, SamplingParams

T = TypeVar("T")


class OwnLoopBackend:
    """Wraps a backend (``generate``, ``chat``, ``load_adapter``, ``unload_adapter``,
    ``shutdown``, ``tokenizer``); :meth:`close` shuts the backend down and ends the thread."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.tokenizer = backend.tokenizer
        self.name = getattr(backend, "name", "")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    @property
    def adapters(self) -> list[str]:
        return list(self.backend.adapters)

    async def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    async def generate(self, prompts: Sequence[Any], sampling: SamplingParams) -> list[Completion]:
        return await self._call(self.backend.generate(prompts, sampling))

    async def chat(
        self, conversations: Sequence[Sequence[ChatMessage]], sampling: SamplingParams
    ) -> list[Completion]:
        return await self._call(self.backend.chat(conversations, sampling))

    async def load_adapter(self, name: str, path: str | Path) -> None:
        await self._call(self.backend.load_adapter(name, path))

    async def unload_adapter(self, name: str) -> None:
        await self._call(self.backend.unload_adapter(name))

    async def shutdown(self) -> None:
        await self._call(self.backend.shutdown())

    def close(self) -> None:
        """Shut the backend down on its loop, then stop the loop and its thread."""
        if not self._loop.is_running():
            return
        asyncio.run_coroutine_threadsafe(self.backend.shutdown(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
