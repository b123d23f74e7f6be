"""The learning proof: does Retroformer's policy gradient raise the reflection reward?

One process, no Ray, and the loop of ``retro-ray train`` (``retro_ray.driver.loop``) with in-process
executors (``retro_ray.driver.local``): the frozen tiny actor (torch backend, greedy) plays
``--tasks`` train-split tasks per iteration; at each failed trial of the main chain (here trial 0:
``trials.max_trials=2``) ``--group-size`` reflections are sampled from the served ``train``
adapter, each scored by one next trial; the groups become one batch (group baseline); the
learner's update runs in this process and publishes the adapter to a registry, which the torch
backend serving the retrospective model hot-swaps in before the next collection. Rewards are
measured on failed first trials of held-out (test-split) tasks, before and after training, with the
same number of reflection samples (and the same seeds) per failed trial; the gain gets a paired
bootstrap 95% interval. ``gap_closed`` is the share of the base-to-trajectory-oracle gap the
trained adapter closes.

    python -m benchmarks.learning_proof --json            # default recipe (~10 min on 2 cores)
    python -m benchmarks.learning_proof --recipe tiny --iterations 2 --json   # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from retro_ray.agents.build import build_trial_loop
from retro_ray.aio import gather_all
from retro_ray.config import Config
from retro_ray.driver.local import in_process_learner, in_process_loop, in_process_serving
from retro_ray.envs.registry import make_env
from retro_ray.llm.base import LLMClient, SamplingParams, seeded
from retro_ray.llm.torch_backend import TorchBackend
from retro_ray.reflection.groups import FailedTrial
from retro_ray.registry import TRAIN_ALIAS
from retro_ray.rollout.branching import GroupRunner
from retro_ray.run_config import load_run_config
from retro_ray.zoo.models import torch_threads

ENVS = ("lookup", "household", "shop")
DEFAULT_ENV = "lookup"
"""The default recipe's tiny actor follows reflections on ``lookup`` (oracle 1.00 vs none 0.32 in
``zoo eval``) but not yet on ``household`` and ``shop``, where no reflector can raise its return."""


def bootstrap_ci(diffs: list[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile 95% interval of the mean of paired differences."""
    rng = random.Random(seed)
    n = len(diffs)
    means = sorted(sum(rng.choices(diffs, k=n)) / n for _ in range(resamples))
    return means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]


def proof_config(args: argparse.Namespace, actor_dir: Path, retro_dir: Path) -> Config:
    """The run's configuration: the zoo's models, one environment, one reflection per failed
    first trial's branch (``max_trials=2``), the greedy actor; ``--set`` overrides last."""
    return load_run_config(
        None,
        [
            f"run.name={args.name}",
            f"run.seed={args.seed}",
            f"env.name={args.env}",
            f"env.seed={args.seed}",
            "trials.max_trials=2",
            "trials.memory_size=3",
            "trials.concurrency=256",
            "actor.policy=llm",
            f"actor.model_dir={actor_dir}",
            f"actor.endpoint.max_tokens={args.actor_max_tokens}",
            "actor.endpoint.temperature=0",
            "reflector.kind=llm",
            f"serve.model_dir={retro_dir}",
            f"train.iterations={args.iterations}",
            f"train.group_size={args.group_size}",
            f"train.failed_trials_per_iteration={args.tasks}",
            *args.set,
        ],
    )


def build_runner(cfg: Config, actor: LLMClient, reflector: LLMClient) -> GroupRunner:
    """First trials and scored reflections with the run's trial loop (held-out measurement)."""
    return GroupRunner({cfg.env.name: build_trial_loop(cfg, actor, reflector)}, cfg.reflector)


def reflection_sampling(cfg: Config) -> SamplingParams:
    """What the collection samples training reflections with (``EpisodeRunner``)."""
    return SamplingParams(
        max_tokens=cfg.reflector.endpoint.max_tokens,
        temperature=cfg.train.temperature,
        top_p=cfg.train.top_p,
        stop=("\n",),
        adapter=TRAIN_ALIAS,
    )


def tasks_of(cfg: Config, split: str, n: int) -> list:
    return make_env(cfg.env.name).tasks(split, n, cfg.env.seed)  # type: ignore[attr-defined]


async def mean_rewards(
    runner: GroupRunner,
    client: LLMClient,
    sampling: SamplingParams,
    failed: list[FailedTrial],
    samples: int,
) -> list[float]:
    """Per failed trial, the mean reward of ``samples`` reflections of the served ``train``
    adapter (seeded per trial and sample: the same draws before and after training)."""

    async def one(f: FailedTrial) -> float:
        keys = [f"held-out|{f.task.task_id}|{i}" for i in range(samples)]
        drawn = await gather_all([client.generate([f.prompt], seeded(sampling, k)) for k in keys])
        after = await runner.returns_after(f, [c.text for (c,) in drawn])
        return sum(a - f.return_before for a in after) / len(after)

    return await gather_all([one(f) for f in failed])


async def oracle_rewards(runner: GroupRunner, failed: list[FailedTrial]) -> list[float]:
    async def one(f: FailedTrial) -> float:
        env = make_env(f.task.env)
        reflection = env.trajectory_oracle(f.trajectory, [])  # type: ignore[attr-defined]
        (after,) = await runner.returns_after(f, [reflection])
        return after - f.return_before

    return list(await asyncio.gather(*(one(f) for f in failed)))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """The proof with ``args.threads`` torch threads; the caller's own count is restored after
    (the tests run it in their process, whose later tests want one thread beside Ray)."""
    with torch_threads(args.threads):
        return await _run(args)


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    start = time.monotonic()
    # In a thread: a zoo build runs its own event loop (asyncio.run), and blocks for minutes.
    actor_dir, retro_dir = await asyncio.to_thread(resolve_models, args)
    cfg = proof_config(args, actor_dir, retro_dir)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / cfg.run.name
        actor = TorchBackend(actor_dir, max_batch_size=128, name="actor")
        serving = in_process_serving(cfg, run_dir)
        runner = build_runner(cfg, actor, serving.client())
        held_out = await runner.failed_trials(tasks_of(cfg, "test", args.eval_tasks))
        log(f"{len(held_out)} failed first trials of {args.eval_tasks} held-out tasks")
        sampling = reflection_sampling(cfg)
        base = await mean_rewards(runner, serving.client(), sampling, held_out, args.eval_samples)
        oracle = await oracle_rewards(runner, held_out)
        log(f"held-out mean reward: base {mean(base):.3f}, trajectory oracle {mean(oracle):.3f}")

        learner = in_process_learner(cfg, run_dir)
        loop = in_process_loop(
            cfg,
            run_dir,
            actor=actor,
            serving=serving,
            learner=learner,
            tokenizer=learner.policy.tokenizer,
        )
        history = await asyncio.to_thread(loop.run)  # its own event loops: sync stages
        trained = await mean_rewards(
            runner, serving.client(), sampling, held_out, args.eval_samples
        )
        served_version = serving.version
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
        "train_reward_curve": [h.get("reward_mean") for h in history],
        "train_groups": [h["groups"] for h in history],
        "served_version": served_version,
        "env": cfg.env.name,
        "held_out_failed_trials": len(held_out),
        "eval_samples_per_trial": args.eval_samples,
        "iterations": cfg.train.iterations,
        "group_size": cfg.train.group_size,
        "tasks_per_iteration": cfg.train.failed_trials_per_iteration,
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
    p.add_argument("--env", default=DEFAULT_ENV, choices=ENVS, help="a built-in environment")
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument(
        "--tasks",
        type=int,
        default=48,
        help="train tasks per iteration (train.failed_trials_per_iteration); each failed first "
        "trial is one group",
    )
    p.add_argument("--group-size", type=int, default=4, help="m reflections per failed trial")
    p.add_argument("--eval-tasks", type=int, default=60, help="held-out tasks")
    p.add_argument("--eval-samples", type=int, default=4, help="reflections per held-out trial")
    p.add_argument("--actor-max-tokens", type=int, default=24)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="learning_proof", help="run name (in a temporary folder)")
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
