"""Online Retroformer through Ray: collect with the ``train`` adapter, update on the distributed
learner, publish, hot-swap, repeat, with a bound on staleness.

The stages are :class:`~retro_ray.learner.local.LocalRetroformer`'s (``collect``: m reflections
per failed trial from the sampler; ``make_batch``: group baseline), so the learning proof's loop
and this one differ only in where the update runs: here in the long-lived Ray Train ``fit()`` of a
:class:`~retro_ray.learner.distributed.DistributedLearner`, which publishes every checkpointed
adapter to the registry as ``train``. The sampler (the driver's copy of the policy, or a serving
deployment watching the registry) swaps to each newly published adapter before collecting.

Staleness: batch ``n`` is collected only after batches below ``n - max_staleness`` are applied
and published, with the newest published adapter, so the data is at most ``max_staleness``
learner steps old; the learner records the actual value per batch (``staleness``).
``max_staleness=0`` reproduces the single-process loop exactly (collect, update, repeat).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from retro_ray.learner.checkpoint import ADAPTER_DIR, read_state
from retro_ray.learner.distributed import DistributedLearner
from retro_ray.learner.local import LocalRetroformer
from retro_ray.reflection.groups import FailedTrial
from retro_ray.registry import TRAIN_ALIAS


class OnlineRetroformer:
    """Drives one online run; ``retro.policy`` is used only to sample (the learner trains)."""

    def __init__(
        self, retro: LocalRetroformer, learner: DistributedLearner, registry: Any | None = None
    ) -> None:
        self.retro = retro
        self.learner = learner
        self.registry = registry  # retro_ray.registry.AdapterRegistry, when publishing
        self.sampler_step = 0  # learner steps in the sampler's adapter (0: the base)
        self.history: list[dict[str, float]] = []

    def refresh_sampler(self) -> int:
        """Load the newest adapter into the sampler (the registry's ``train`` alias, else the
        learner's latest checkpoint); the learner step it holds."""
        directory, step = self._newest_adapter()
        if directory is None or step == self.sampler_step:
            return self.sampler_step
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        weights = load_file(directory / "adapter_model.safetensors")
        set_peft_model_state_dict(self.retro.policy.model, weights)
        self.sampler_step = step
        return step

    def _newest_adapter(self) -> tuple[Path | None, int]:
        if self.registry is not None:
            try:
                version = self.registry.resolve(TRAIN_ALIAS)
            except KeyError:
                return None, 0
            return self.registry.verify(version), self.registry.get(version).step
        try:
            checkpoint = self.learner.latest_checkpoint()
        except FileNotFoundError:
            return None, 0
        return checkpoint / ADAPTER_DIR, read_state(checkpoint).cursor

    async def run(self, pool: Sequence[FailedTrial], iterations: int) -> list[dict[str, float]]:
        """``iterations`` collect-and-update rounds; per-batch learner metrics, in order."""
        staleness = self.learner.config.max_staleness
        for n in range(iterations):
            await asyncio.to_thread(self.learner.wait_applied, n - staleness)
            self.refresh_sampler()
            groups = await self.retro.collect(pool)
            batch, stats = self.retro.make_batch(groups)
            info = {k: v for k, v in stats.items() if isinstance(v, float)}
            await asyncio.to_thread(self.learner.submit, batch, self.sampler_step, info)
        await asyncio.to_thread(self.learner.finish)
        self.refresh_sampler()
        self.history = self.learner.metrics()
        return self.history
