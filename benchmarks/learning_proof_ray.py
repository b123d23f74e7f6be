"""The learning proof through the distributed learner, online and offline.

Same setup and held-out measurement as :mod:`benchmarks.learning_proof` (failed first trials of
test-split tasks, ``--eval-samples`` reflections each, paired bootstrap interval of the gain),
with the update moved to Ray:

- **online**: ``retro-ray train``'s loop (``retro_ray.driver.loop``) with in-process collection
  and serving and a :class:`~retro_ray.learner.distributed.DistributedLearner` (``--workers``)
  publishing each adapter to the registry the serving side hot-swaps from; ``--overlap`` collects
  iteration ``i + 1`` while batch ``i`` trains (``ppo_clip``, staleness at most 1);
- **offline**: the *base* reflector collects the same tasks into a Parquet experience log (token
  ids and log-probs from the sampler), then :mod:`retro_ray.learner.offline` trains a fresh adapter
  from the log alone (``ppo_clip`` with the log's behaviour log-probs) through the same
  distributed learner, ``--offline-epochs`` passes.

    python -m benchmarks.learning_proof_ray --env lookup --iterations 8 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import torch

from benchmarks.learning_proof import (
    ENVS,
    bootstrap_ci,
    build_runner,
    log,
    mean,
    mean_rewards,
    oracle_rewards,
    proof_config,
    reflection_sampling,
    resolve_models,
    tasks_of,
)
from retro_ray.driver.local import in_process_loop, in_process_serving, registry_target
from retro_ray.learner.checkpoint import ADAPTER_DIR
from retro_ray.learner.distributed import DistributedLearner
from retro_ray.learner.offline import load_groups, offline_batches, offline_config
from retro_ray.llm.base import PinnedAdapter
from retro_ray.llm.torch_backend import TorchBackend
from retro_ray.rollout.experience import ExperienceLog
from retro_ray.rollout.local import LocalCollector


def gain(trained: list[float], base: list[float], seed: int) -> dict[str, float]:
    diffs = [t - b for t, b in zip(trained, base, strict=True)]
    low, high = bootstrap_ci(diffs, seed=seed)
    return {"mean_reward": mean(trained), "gain": mean(diffs), "ci95_low": low, "ci95_high": high}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="learning_proof_ray-") as tmp:
        return await run_in(args, Path(tmp))


async def run_in(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    start = time.monotonic()
    torch.set_num_threads(1)
    actor_dir, retro_dir = resolve_models(args)
    overlap = ["train.overlap=true", "learner.max_staleness=1", "learner.loss.name=ppo_clip"]
    args.set = [
        f"learner.num_workers={args.workers}",
        "learner.cpus_per_worker=0.5",
        *(overlap if args.overlap else []),
        *args.set,
    ]
    cfg = proof_config(args, actor_dir, retro_dir)
    actor = TorchBackend(actor_dir, max_batch_size=128, name="actor")
    serving = in_process_serving(cfg, work / "online")
    runner = build_runner(cfg, actor, serving.client())
    sampling = reflection_sampling(cfg)
    held_out = await runner.failed_trials(tasks_of(cfg, "test", args.eval_tasks))
    log(f"{len(held_out)} failed first trials of {args.eval_tasks} held-out tasks")
    base = await mean_rewards(runner, serving.client(), sampling, held_out, args.eval_samples)
    oracle = await oracle_rewards(runner, held_out)
    log(f"held-out mean reward: base {mean(base):.3f}, trajectory oracle {mean(oracle):.3f}")
    result: dict[str, Any] = {"mean_reward_base": mean(base), "oracle": mean(oracle)}

    # -- online: the training loop with the distributed learner ------------------------------------
    target = registry_target(cfg, work / "online")
    learner = DistributedLearner(
        retro_dir, cfg.learner, work / "online" / "learner", registry=target
    )
    with learner.start():
        loop = in_process_loop(
            cfg,
            work / "online",
            actor=actor,
            serving=serving,
            learner=learner,
            tokenizer=serving.backend.tokenizer,
        )
        history = await asyncio.to_thread(loop.run)
    log("online: " + " ".join(f"{h.get('reward_mean', 0):.2f}" for h in history))
    trained = await mean_rewards(runner, serving.client(), sampling, held_out, args.eval_samples)
    result["online"] = {
        **gain(trained, base, args.seed),
        "train_reward_curve": [h.get("reward_mean") for h in history],
        "max_staleness_seen": max((h.get("staleness") or 0) for h in history),
        "step_s": mean([h.get("learner_update_time_s", 0.0) for h in history]),
    }

    # -- offline: a log written by the base reflector -----------------------------------------------
    base_serving = in_process_serving(cfg, work / "base")  # an empty registry: the base model
    experience = ExperienceLog(work / "log")
    collector = LocalCollector(
        cfg, "base", experience, actor_client=actor, reflector_client=base_serving.client()
    )
    per_iteration = cfg.train.failed_trials_per_iteration
    tasks = loop.tasks
    for it in range(args.iterations):
        chunk = tasks[it * per_iteration : (it + 1) * per_iteration]
        await asyncio.to_thread(collector.collect, chunk, it)
    groups = load_groups(experience)
    off_cfg = offline_config(cfg.learner, "ppo_clip")
    tokenizer = serving.backend.tokenizer
    with DistributedLearner(retro_dir, off_cfg, work / "offline", recompute_old=False) as lrn:
        for epoch in range(args.offline_epochs):
            for batch in offline_batches(
                groups, tokenizer, tokenizer.pad_token_id, off_cfg, per_iteration,
                loss_name="ppo_clip", seed=args.seed + epoch,
            ):  # fmt: skip
                lrn.submit(batch)
        final = lrn.finish()
    await base_serving.backend.load_adapter("offline", final / ADAPTER_DIR)
    offline_client = PinnedAdapter(base_serving.backend, "offline")
    trained = await mean_rewards(runner, offline_client, sampling, held_out, args.eval_samples)
    result["offline"] = {
        **gain(trained, base, args.seed),
        "log_groups": len(groups),
        "epochs": args.offline_epochs,
    }
    result.update(
        env=cfg.env.name,
        held_out_failed_trials=len(held_out),
        iterations=args.iterations,
        workers=args.workers,
        overlap=args.overlap,
        wall_time_s=time.monotonic() - start,
    )
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="default")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--env", default="lookup", choices=ENVS)
    p.add_argument("--iterations", type=int, default=8)
    p.add_argument("--tasks", type=int, default=48, help="train tasks per iteration")
    p.add_argument("--group-size", type=int, default=4)
    p.add_argument("--eval-tasks", type=int, default=100)
    p.add_argument("--eval-samples", type=int, default=4)
    p.add_argument("--actor-max-tokens", type=int, default=24)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--overlap", action="store_true", help="train.overlap (staleness 1)")
    p.add_argument("--offline-epochs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="learning_proof_ray")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    ray.init(
        num_cpus=4,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}},
    )
    try:
        result = asyncio.run(run(args))
    finally:
        ray.shutdown()
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
