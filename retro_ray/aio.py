"""Small asyncio helpers shared by the trial loop, rollouts and the learner."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import TypeVar

T = TypeVar("T")


async def gather_all(awaitables: Sequence[Awaitable[T]]) -> list[T]:
    """Await all at once, results in order. The first error cancels the others and is raised as
    itself (not wrapped in an ExceptionGroup): no branch keeps calling a dead endpoint."""

    async def run(awaitable: Awaitable[T]) -> T:
        return await awaitable

    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(run(a)) for a in awaitables]
    except ExceptionGroup as errors:
        raise errors.exceptions[0] from None
    return [t.result() for t in tasks]
