"""A failed hot-swap heals: the controller retries a failed revision with a bounded exponential
backoff, a replica registers an adapter only once it loaded, and the driver's wait names the
replica and the error when the controller gives up.

Real parts throughout: the registry on disk, the torch backend with the tiny model, the replica's
adapter runtime and the controller; the replica's side of the protocol is the loop
``RetroServer`` runs (register, load what the controller wants, report), without Ray around it."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from retro_ray.driver.train import SwapFailed, wait_until_served
from retro_ray.llm.base import SamplingParams
from retro_ray.llm.torch_backend import TorchBackend
from retro_ray.registry import AdapterRegistry
from retro_ray.serve.controller import AliasController, RegistryWatcher
from retro_ray.serve.runtime import ReplicaRuntime
from tests.support.tiny_model import TinyModel, build_tiny_model

WEIGHTS = "adapter_model.safetensors"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return build_tiny_model(tmp_path_factory.mktemp("tiny_hotswap"))


def test_a_failed_torch_load_registers_nothing_and_can_be_retried(tiny: TinyModel, tmp_path):
    backend = TorchBackend(tiny.model_dir)
    asyncio.run(backend.load_adapter("retro@1", tiny.adapters["a"]))
    broken = tmp_path / "adapter"
    shutil.copytree(tiny.adapters["b"], broken)
    good = (broken / WEIGHTS).read_bytes()
    (broken / WEIGHTS).write_bytes(b"\x00" * 512)
    with pytest.raises(Exception, match="header"):
        asyncio.run(backend.load_adapter("retro@2", broken))
    assert backend.adapters == ["retro@1"]
    assert len(backend._adapters.model.peft_config) == 1  # no half-loaded layers left behind
    (broken / WEIGHTS).write_bytes(good)
    asyncio.run(backend.load_adapter("retro@2", broken))  # the same name, now loadable
    assert backend.adapters == ["retro@1", "retro@2"]


class Replica:
    """One serving replica's side of the two-phase swap, as ``RetroServer._sync_loop`` runs it."""

    def __init__(self, ctl: AliasController, registry: AdapterRegistry, backend, rid: str):
        self.ctl, self.rid = ctl, rid
        self.runtime = ReplicaRuntime(backend, registry.verify, registry.version_name, 4)

    async def run(self) -> None:
        generation, wanted = self.ctl.register(self.rid)
        await self.runtime.sync(wanted)
        await self.ctl.report(self.rid, self.runtime.loaded, self.runtime.failed)
        while True:
            latest, wanted = await self.ctl.wait_for_work(self.rid, generation, 0.2)
            if latest != generation:
                await self.runtime.sync(wanted)
                await self.ctl.report(self.rid, self.runtime.loaded, self.runtime.failed)
                generation = latest


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _setup(tiny: TinyModel, root: Path, **retry: float):
    registry = AdapterRegistry(root, tiny.model_dir, max_lora_rank=8)
    ctl = AliasController("retro", "base", swap_timeout_s=20.0)
    clock = Clock()
    watcher = RegistryWatcher(ctl, registry.state, 0.05, clock=clock, **retry)  # type: ignore[arg-type]
    return registry, ctl, watcher, clock


def test_a_failed_swap_is_retried_with_backoff_and_lands(tiny: TinyModel, tmp_path) -> None:
    registry, ctl, watcher, clock = _setup(tiny, tmp_path / "registry", retry_backoff_s=2.0)
    replica = Replica(ctl, registry, TorchBackend(tiny.model_dir), "r1@127.0.0.1")

    async def scenario() -> None:
        task = asyncio.create_task(replica.run())
        first = registry.publish(tiny.adapters["a"]).version
        assert (await watcher.step()).ok and ctl.resolve("train").version == first
        second = registry.publish(tiny.adapters["b"]).version
        weights = registry.path(second) / WEIGHTS
        good = weights.read_bytes()
        weights.write_bytes(b"\x00" * len(good))  # unreadable for now (a disk hiccup)
        failed = await watcher.step()
        assert not failed.ok and f"replica r1@127.0.0.1: version {second}" in failed.reason
        assert ctl.failure is not None and ctl.failure.attempts == 1
        assert ctl.failure.retry_in_s == 2.0 and not ctl.failure.gave_up
        assert ctl.resolve("train").version == first  # the old table keeps serving
        clock.now += 1.0
        assert await watcher.step() is None  # still backing off
        weights.write_bytes(good)  # the file is back
        clock.now += 1.5
        retried = await watcher.step()
        assert retried.ok and ctl.resolve("train").version == second
        assert ctl.failure is None and ctl.table()["failure"] is None
        out = await replica.runtime.generate(["Bob Lee"], SamplingParams(max_tokens=3), second)
        assert len(out) == 1
        task.cancel()

    asyncio.run(scenario())


def test_a_permanent_failure_is_given_up_and_named_to_the_driver(tiny: TinyModel, tmp_path):
    registry, ctl, watcher, clock = _setup(
        tiny, tmp_path / "registry", retry_backoff_s=1.0, max_backoff_s=3.0, max_attempts=4
    )
    replica = Replica(ctl, registry, TorchBackend(tiny.model_dir), "r7@10.0.0.7")

    async def scenario() -> int:
        task = asyncio.create_task(replica.run())
        version = registry.publish(tiny.adapters["a"]).version
        (registry.path(version) / WEIGHTS).write_bytes(b"tampered")
        delays = []
        while (result := await watcher.step()) is not None or not ctl.failure.gave_up:
            if result is not None:
                delays.append(ctl.failure.retry_in_s)
            clock.now += 0.5
        assert delays == [1.0, 2.0, 3.0, 0.0]  # doubling, capped; the 4th attempt gives up
        clock.now += 100.0
        assert await watcher.step() is None  # given up until the registry changes
        task.cancel()
        return version

    version = asyncio.run(scenario())
    failure = ctl.table()["failure"]
    assert failure["gave_up"] and failure["attempts"] == 4
    with pytest.raises(SwapFailed) as err:
        wait_until_served(ctl.table, version, timeout_s=5.0)
    for fragment in (f"version {version}", "4 attempts", "replica r7@10.0.0.7", "changed since"):
        assert fragment in str(err.value)
