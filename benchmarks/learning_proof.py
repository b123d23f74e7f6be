"""The learning proof: does Retroformer's policy gradient raise the reflection reward?

One process, no Ray: the frozen tiny actor (torch backend, greedy), the retrospective base plus a
LoRA adapter trained by ``LocalRetroformer``. Rewards are measured on failed first trials of
held-out (test-split) tasks, before and after training, with the same number of reflection
samples per failed trial; the gain gets a paired bootstrap 95% interval. ``gap_closed`` is the
share of the base-to-trajectory-oracle gap the trained adapter closes.

    python -m benchmarks.learning_proof --json            # default recipe (~10 min on 2 cores)
    python -m benchmarks.learning_proof --recipe tiny --iterations 2 --json   # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from retro_ray.agents.actors import LLMActor
from retro_ray.agents.trial_loop import TrialLoop
from retro_ray.config import LearnerConfig, ReflectorConfig, TrainConfig
from retro_ray.envs.registry import make_env
from retro_ray.learner.local import LocalRetroformer
from retro_ray.learner.policy import ReflectorPolicy
from retro_ray.llm.base import SamplingParams
from retro_ray.llm.torch_backend import TorchBackend
from retro_ray.reflection.groups import FailedTrial
from retro_ray.rollout.branching import GroupRunner
from retro_ray.run_config import load_run_config

ENVS = ("lookup", "household", "shop")
DEFAULT_ENVS = ("lookup",)
"""The default recipe's tiny actor follows reflections on ``lookup`` (oracle 1.00 vs none 0.32 in
``zoo eval``) but not yet on ``household`` and ``shop``, where no reflector can raise its return."""


def bootstrap_ci(diffs: list[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile 95% interval of the mean of paired differences."""
    rng = random.Random(seed)
    n = len(diffs)
    means = sorted(sum(rng.choices(diffs, k=n)) / n for _ in range(resamples))
    return means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]


def build_runner(
    actor_dir: Path, reflector: ReflectorConfig, actor_max_tokens: int, envs: tuple[str, ...]
) -> GroupRunner:
    backend = TorchBackend(actor_dir, max_batch_size=128)
    defaults = load_run_config()
    actor = LLMActor(
        backend,
        SamplingParams(max_tokens=actor_max_tokens, temperature=0.0, stop=("\n",)),
        defaults.actor.instruction,
        defaults.actor.scratchpad_max_chars,
    )
    loops = {
        name: TrialLoop(lambda name=name: make_env(name), actor, None, max_trials=2, memory_size=3)
        for name in envs
    }
    return GroupRunner(loops, reflector)


def tasks_of(split: str, per_env: int, seed: int, envs: tuple[str, ...]) -> list:
    return [t for name in envs for t in make_env(name).tasks(split, per_env, seed)]  # type: ignore[attr-defined]


async def oracle_rewards(runner: GroupRunner, failed: list[FailedTrial]) -> list[float]:
    async def one(f: FailedTrial) -> float:
        env = make_env(f.task.env)
        reflection = env.trajectory_oracle(f.trajectory, [])  # type: ignore[attr-defined]
        (after,) = await runner.returns_after(f, [reflection])
        return after - f.return_before

    return list(await asyncio.gather(*(one(f) for f in failed)))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    start = time.monotonic()
    torch.set_num_threads(args.threads)
    # In a thread: a zoo build runs its own event loop (asyncio.run), and blocks for minutes.
    actor_dir, retro_dir = await asyncio.to_thread(resolve_models, args)
    cfg = load_run_config(None, args.set)
    learner: LearnerConfig = cfg.learner
    train: TrainConfig = replace(
        cfg.train,
        iterations=args.iterations,
        group_size=args.group_size,
        failed_trials_per_iteration=args.groups,
    )
    reflector = cfg.reflector
    envs = tuple(args.envs.split(","))
    runner = build_runner(actor_dir, reflector, args.actor_max_tokens, envs)
    log(f"first trials: {args.train_tasks} train and {args.eval_tasks} test tasks per env")
    train_pool = await runner.failed_trials(tasks_of("train", args.train_tasks, args.seed, envs))
    held_out = await runner.failed_trials(tasks_of("test", args.eval_tasks, args.seed, envs))
    log(f"failed first trials: {len(train_pool)} train, {len(held_out)} held-out")

    policy = ReflectorPolicy(retro_dir, learner, seed=args.seed)
    retro = LocalRetroformer(
        policy, runner, learner, train, reflector.endpoint.max_tokens, args.seed
    )
    base = await retro.mean_rewards(held_out, args.eval_samples)
    oracle = await oracle_rewards(runner, held_out)
    log(f"held-out mean reward: base {mean(base):.3f}, trajectory oracle {mean(oracle):.3f}")

    curve = []
    for it in range(train.iterations):
        t0 = time.monotonic()
        groups = await retro.collect(train_pool)
        metrics = retro.learn(groups)
        curve.append(metrics["reward_mean"])
        eta = (time.monotonic() - t0) * (train.iterations - it - 1)
        log(
            f"iter {it + 1}/{train.iterations} reward {metrics['reward_mean']:.3f} "
            f"zero-signal {metrics['zero_signal_group_share']:.2f} loss {metrics['loss']:.4f} "
            f"kl {metrics.get('kl_ref', 0.0):.4f} ({time.monotonic() - t0:.1f}s, ETA {eta:.0f}s)"
        )

    trained = await retro.mean_rewards(held_out, args.eval_samples)
    diffs = [t - b for t, b in zip(trained, base, strict=True)]
    low, high = bootstrap_ci(diffs, seed=args.seed)
    gap = mean(oracle) - mean(base)
    return {
        "mean_reward_base": mean(base),
        "mean_reward_trained": mean(trained),
        "mean_reward_trajectory_oracle": mean(oracle),
        "gain": mean(trained) - mean(base),
        "gain_ci95_low": low,
        "gain_ci95_high": high,
        "gap_closed": (mean(trained) - mean(base)) / gap if gap > 0 else None,
        "train_reward_curve": curve,
        "envs": list(envs),
        "held_out_failed_trials": len(held_out),
        "eval_samples_per_trial": args.eval_samples,
        "iterations": train.iterations,
        "group_size": train.group_size,
        "groups_per_iteration": train.failed_trials_per_iteration,
        "wall_time_s": time.monotonic() - start,
    }


def resolve_models(args: argparse.Namespace) -> tuple[Path, Path]:
    from retro_ray.zoo.build import build_zoo

    zoo = build_zoo(args.recipe, cache_dir=args.cache_dir)
    return zoo.actor_dir, zoo.retrospective_dir


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def log(message: str) -> None:
    print(f"[learning_proof] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="default", help="zoo recipe (built if missing)")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--envs", default=",".join(DEFAULT_ENVS), help="comma-separated built-ins")
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--groups", type=int, default=32, help="failed trials per iteration")
    p.add_argument("--group-size", type=int, default=4, help="m reflections per failed trial")
    p.add_argument("--train-tasks", type=int, default=200, help="train tasks per environment")
    p.add_argument("--eval-tasks", type=int, default=60, help="held-out tasks per environment")
    p.add_argument("--eval-samples", type=int, default=4, help="reflections per held-out trial")
    p.add_argument("--actor-max-tokens", type=int, default=24)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, e.g. learner.lr=1e-3",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    result = asyncio.run(run(args))
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
