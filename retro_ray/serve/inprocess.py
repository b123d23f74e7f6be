"""Serving in the driver's process: the ``train`` alias of the registry on a local torch backend.

:class:`InProcessServing` has the part of the Serve app that the training loop
(``retro_ray.driver.loop``) uses: the adapter ``registry`` and ``wait_until_served(version)``, the
hot-swap (here: the backend loads the registry's verified files of that version, then drops the
one it replaces). Its :meth:`~InProcessServing.client` answers requests for the ``train`` alias
with the served version and names each completion ``<adapter_name>@<version>`` (``retro@0``: the
base model), as the Serve app does, so the experience rows record which adapter wrote them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Sequence
from typing import Any

from retro_ray.llm.base import ChatMessage, Completion, LLMClient, SamplingParams
from retro_ray.llm.torch_backend import TorchBackend
from retro_ray.registry import TRAIN_ALIAS, AdapterRegistry


class InProcessServing:
    """A backend of the base model serving the registry's ``train`` versions: the torch backend,
    or a vLLM engine in an ``OwnLoopBackend``."""

    def __init__(self, backend: TorchBackend | Any, registry: AdapterRegistry) -> None:
        self.backend, self.registry = backend, registry
        self.version = 0  # the served ``train`` version (0: the base model)

    def adapter(self) -> str | None:
        """The backend's adapter name of the served version (None: the base model)."""
        return None if self.version == 0 else self.registry.version_name(self.version)

    def wait_until_served(self, version: int) -> float:
        """Hot-swap ``version`` in (from the registry's checked files); the seconds it took."""
        start = time.monotonic()
        if version != self.version:
            asyncio.run(self._swap(version))
        return time.monotonic() - start

    async def _swap(self, version: int) -> None:
        old = self.adapter()
        if version:
            name = self.registry.version_name(version)
            await self.backend.load_adapter(name, self.registry.verify(version))
        self.version = version
        if old is not None:
            await self.backend.unload_adapter(old)

    def client(self) -> LLMClient:
        """An ``LLMClient`` whose ``train`` requests run on the served version."""
        return _TrainAliasClient(self)


class _TrainAliasClient:
    def __init__(self, serving: InProcessServing) -> None:
        self.serving = serving

    async def generate(self, prompts: Sequence[str], sampling: SamplingParams) -> list[Completion]:
        return await self._run(self.serving.backend.generate, prompts, sampling)

    async def chat(
        self, conversations: Sequence[Sequence[ChatMessage]], sampling: SamplingParams
    ) -> list[Completion]:
        return await self._run(self.serving.backend.chat, conversations, sampling)

    async def _run(self, method: Any, inputs: Any, sampling: SamplingParams) -> list[Completion]:
        if sampling.adapter != TRAIN_ALIAS:
            return await method(inputs, sampling)
        version = self.serving.version
        served = dataclasses.replace(sampling, adapter=self.serving.adapter())
        completions = await method(inputs, served)
        for completion in completions:
            completion.model = self.serving.registry.version_name(version)
            completion.adapter_version = version
        return completions
