"""The learning proof, small: on held-out lookup tasks, Retroformer's policy gradient raises the
mean reflection reward of the default zoo's retrospective model, with a bootstrap 95% interval
above zero. The training is ``retro-ray train``'s loop (``retro_ray.driver.loop``) with in-process
executors: the product's branching rule, group-to-batch function, publication and hot-swap. Uses
the default zoo (built once into the user cache, about 3 minutes on 2 cores)."""

from __future__ import annotations

import asyncio

import pytest

from benchmarks.learning_proof import run


@pytest.mark.slow
@pytest.mark.timeout(1500)  # builds the default zoo when the cache is empty (minutes)
def test_policy_gradient_raises_held_out_reflection_reward() -> None:
    import argparse

    args = argparse.Namespace(
        recipe="default",
        cache_dir=None,
        env="lookup",
        name="learning_proof",
        iterations=8,
        tasks=48,  # about 32 failed first trials (groups) per iteration
        group_size=4,
        eval_tasks=100,
        eval_samples=4,
        actor_max_tokens=24,
        threads=2,
        seed=0,
        set=[],
    )
    import torch

    callers_threads = torch.get_num_threads()
    result = asyncio.run(run(args))
    print(result)
    # Its two threads end with it: the tests after it run beside Ray on the suite's one.
    assert torch.get_num_threads() == callers_threads
    assert result["gain_ci95_low"] > 0.0
    assert result["mean_reward_trained"] >= result["mean_reward_base"] + 0.1
    assert result["gap_closed"] is not None and result["gap_closed"] > 0.3
    assert result["served_version"] == 8  # every iteration published, and the last one is served
