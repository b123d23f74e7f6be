"""The learning proof through the distributed learner, online and offline.

Same setup and held-out measurement as :mod:`benchmarks.learning_proof` (failed first trials of
test-split tasks, ``--eval-samples`` reflections each, paired bootstrap interval of the gain),
with the update moved to Ray:

- **online**: :class:`~retro_ray.learner.online.OnlineRetroformer` with a
  :class:`~retro_ray.learner.distributed.DistributedLearner` (``--workers``, ``--staleness``)
  publishing each adapter to a registry, the sampler swapping to it before each collection;
- **offline**: the *base* reflector collects the same number of groups into a Parquet experience
  log (token ids and log-probs from the sampler), then :mod:`retro_ray.learner.offline` trains a
  fresh adapter from the log alone (``ppo_clip`` with the log's behaviour log-probs) through the
  same distributed learner, ``--offline-epochs`` passes.

    python -m benchmarks.learning_proof_ray --envs lookup --iterations 8 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import ray
import torch

from benchmarks.learning_proof import (
    bootstrap_ci,
    build_runner,
    log,
    mean,
    oracle_rewards,
    resolve_models,
    tasks_of,
)
from retro_ray.learner.distributed import DistributedLearner
from retro_ray.learner.local import LocalRetroformer
from retro_ray.learner.offline import load_groups, offline_batches, offline_config
from retro_ray.learner.online import OnlineRetroformer
from retro_ray.learner.policy import ReflectorPolicy
from retro_ray.learner.train_loop import RegistryTarget
from retro_ray.rollout.experience import ExperienceLog, ExperienceRow
from retro_ray.run_config import load_run_config


def gain(trained: list[float], base: list[float], seed: int) -> dict[str, float]:
    diffs = [t - b for t, b in zip(trained, base, strict=True)]
    low, high = bootstrap_ci(diffs, seed=seed)
    return {"mean_reward": mean(trained), "gain": mean(diffs), "ci95_low": low, "ci95_high": high}


def write_groups(log_: ExperienceLog, iteration: int, groups: list) -> None:
    """The base reflector's groups as experience rows (one episode file per failed trial)."""
    for g in groups:
        k = g.failed.trajectory.trial + 1
        rows = [
            ExperienceRow(
                task_id=g.failed.task.task_id,
                split="train",
                env=g.failed.task.env,
                mode="train",
                trial=k,
                sample=i,
                won=after >= 1.0,
                return_after=after,
                return_before=g.failed.return_before,
                reward=after - g.failed.return_before,
                prompt=g.failed.prompt,
                reflection=text,
                reflection_token_ids=ids,
                reflection_logprobs=lps,
                adapter_version="base",
            )
            for i, (text, after, ids, lps) in enumerate(
                zip(g.reflections, g.returns_after, g.token_ids, g.logprobs, strict=True)
            )
        ]
        log_.write_episode("base", iteration, g.failed.task.task_id, rows)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    start = time.monotonic()
    torch.set_num_threads(1)
    actor_dir, retro_dir = resolve_models(args)
    cfg = load_run_config(None, args.set)
    learner_cfg = replace(
        cfg.learner, num_workers=args.workers, max_staleness=args.staleness, cpus_per_worker=0.5
    )
    train = replace(cfg.train, group_size=args.group_size, failed_trials_per_iteration=args.groups)
    envs = tuple(args.envs.split(","))
    runner = build_runner(actor_dir, cfg.reflector, args.actor_max_tokens, envs)
    train_pool = await runner.failed_trials(tasks_of("train", args.train_tasks, args.seed, envs))
    held_out = await runner.failed_trials(tasks_of("test", args.eval_tasks, args.seed, envs))
    log(f"failed first trials: {len(train_pool)} train, {len(held_out)} held-out")

    def retro_for(config: Any) -> LocalRetroformer:
        policy = ReflectorPolicy(retro_dir, config, seed=args.seed)
        max_tokens = cfg.reflector.endpoint.max_tokens
        return LocalRetroformer(policy, runner, config, train, max_tokens, args.seed)

    base_retro = retro_for(learner_cfg)
    base = await base_retro.mean_rewards(held_out, args.eval_samples)
    oracle = await oracle_rewards(runner, held_out)
    log(f"held-out mean reward: base {mean(base):.3f}, trajectory oracle {mean(oracle):.3f}")
    result: dict[str, Any] = {"mean_reward_base": mean(base), "oracle": mean(oracle)}

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # -- online ---------------------------------------------------------------------------
        online_retro = retro_for(learner_cfg)
        target = RegistryTarget(
            str(work / "registry"), cfg.registry.name, cfg.registry.max_lora_rank
        )
        from retro_ray.registry import AdapterRegistry

        with DistributedLearner(retro_dir, learner_cfg, work / "online", registry=target) as lrn:
            registry = AdapterRegistry(target.root, retro_dir, target.name, target.max_lora_rank)
            online = OnlineRetroformer(online_retro, lrn, registry)
            history = await online.run(train_pool, args.iterations)
        log("online: " + " ".join(f"{m.get('reward_mean', 0):.2f}" for m in history))
        trained = await online_retro.mean_rewards(held_out, args.eval_samples)
        result["online"] = {
            **gain(trained, base, args.seed),
            "train_reward_curve": [m.get("reward_mean") for m in history],
            "max_staleness_seen": max(m["staleness"] for m in history),
            "step_s": mean([m["update_time_s"] for m in history]),
        }
        # -- offline: a log written by the base reflector ---------------------------------------
        experience = ExperienceLog(work / "log")
        for it in range(args.iterations):
            write_groups(experience, it, await base_retro.collect(train_pool))
        groups = load_groups(experience)
        off_cfg = offline_config(learner_cfg, "ppo_clip")
        off_retro = retro_for(off_cfg)
        policy = off_retro.policy
        with DistributedLearner(retro_dir, off_cfg, work / "offline", recompute_old=False) as lrn:
            for epoch in range(args.offline_epochs):
                for batch in offline_batches(
                    groups, policy.tokenizer, policy.pad_token_id, off_cfg, args.groups,
                    loss_name="ppo_clip", seed=args.seed + epoch,
                ):  # fmt: skip
                    lrn.submit(batch)
            final = lrn.finish()
        from retro_ray.learner.checkpoint import load_checkpoint

        load_checkpoint(final, policy)
        trained = await off_retro.mean_rewards(held_out, args.eval_samples)
        result["offline"] = {
            **gain(trained, base, args.seed),
            "log_groups": len(groups),
            "epochs": args.offline_epochs,
        }
    result.update(
        envs=list(envs),
        held_out_failed_trials=len(held_out),
        iterations=args.iterations,
        workers=args.workers,
        max_staleness=args.staleness,
        wall_time_s=time.monotonic() - start,
    )
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="default")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--envs", default="lookup")
    p.add_argument("--iterations", type=int, default=8)
    p.add_argument("--groups", type=int, default=32)
    p.add_argument("--group-size", type=int, default=4)
    p.add_argument("--train-tasks", type=int, default=200)
    p.add_argument("--eval-tasks", type=int, default=100)
    p.add_argument("--eval-samples", type=int, default=4)
    p.add_argument("--actor-max-tokens", type=int, default=24)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--staleness", type=int, default=0)
    p.add_argument("--offline-epochs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
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
