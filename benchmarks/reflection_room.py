"""Does a retrospective base leave Retroformer room, and can its samples reach it?

The policy gradient only sees the reflections the base samples: it can make a good one more
likely, not invent one it never writes. So, per family, on test tasks whose first trial fails
(greedy actor), the next trial is played after each of: the trajectory oracle's reflection, the
base's greedy one, and ``--samples`` of the base at temperature 1 (training's sampling). Then
once more after a second failed trial, with the oracle's first reflection in memory (the third
trial, where a reflection must also carry what the notes already said). Per family and trial:

- ``success``: next-trial success after the oracle, the base greedy, the base sampled (mean);
- ``reachable``: share of failed trials on which at least one sample wins the next trial;
- ``oracle_reachable``: of the failed trials the oracle's reflection turns into a win, the share
  on which a sample does too (where the room above the base lies within the samples' reach);
- ``zero_signal_share``: share of groups (the first ``--group-size`` samples of a failed trial)
  whose rewards are all equal, so they carry no gradient (``algo.rewards``).

    python -m benchmarks.reflection_room --recipe families --tasks 60 --samples 8 --json

The actor plays greedy, as in training and evaluation, so a reflection's reward is a function
of its text.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from retro_ray.agents.actors import Actor
from retro_ray.agents.build import build_actor, build_reflector
from retro_ray.agents.reflectors import Reflector, TrajectoryOracleReflector
from retro_ray.agents.trial_loop import TrialLoop
from retro_ray.config import Config
from retro_ray.envs.base import Task
from retro_ray.envs.registry import make_env_from_config
from retro_ray.evaluation.play import task_list
from retro_ray.llm.base import LLMClient
from retro_ray.zoo.advice import family_config
from retro_ray.zoo.recipes import ENVS

TRIALS = ("after_trial_1", "after_trial_2")


@dataclass
class Reflectors:
    oracle: Reflector
    greedy: Reflector
    sampled: Reflector


def reflectors_for(cfg: Config, retro: LLMClient) -> Reflectors:
    """The trajectory oracle, and the base at the evaluation's greedy decoding and at
    temperature 1."""
    endpoint = cfg.reflector.endpoint
    sampled_cfg = replace(cfg.reflector, endpoint=replace(endpoint, temperature=1.0))
    greedy, sampled = build_reflector(cfg.reflector, retro), build_reflector(sampled_cfg, retro)
    assert greedy is not None and sampled is not None
    return Reflectors(TrajectoryOracleReflector(), greedy, sampled)


async def probe_task(
    cfg: Config, loop: TrialLoop, reflectors: Reflectors, task: Task, samples: int
) -> dict[str, Any] | None:
    """The rewards of each reflection on one task's failed first trial (and, where the oracle's
    reflection fails too, on its failed second trial); None when the first trial wins."""

    async def play(k: int, memory: Sequence[str]) -> tuple[bool, Any]:
        env = make_env_from_config(cfg.env)
        _, trajectory = await loop.run_trial(env, task, k, list(memory))
        return trajectory.won, trajectory

    won, trajectory = await play(0, [])
    if won:
        return None
    row: dict[str, Any] = {"task_id": task.task_id}
    memory: list[str] = []
    for k, name in enumerate(TRIALS, start=1):
        env = make_env_from_config(cfg.env)
        seed = f"{loop.seed}|{task.task_id}|{k}"
        oracle = (await reflectors.oracle.reflect(env, trajectory, memory, seed)).text
        greedy = (await reflectors.greedy.reflect(env, trajectory, memory, seed)).text
        drawn = await asyncio.gather(
            *(
                reflectors.sampled.reflect(env, trajectory, memory, f"{seed}|{i}")
                for i in range(samples)
            )
        )
        texts = [oracle, greedy, *(r.text for r in drawn)]
        (oracle_won, oracle_trajectory), (greedy_won, _), *played = await asyncio.gather(
            *(play(k, [*memory, text]) for text in texts)
        )
        row[name] = {
            "oracle": [oracle, oracle_won],
            "greedy": [greedy, greedy_won],
            "samples": [[text, won] for text, (won, _) in zip(texts[2:], played, strict=True)],
        }
        if oracle_won:
            break
        memory, trajectory = [*memory, oracle], oracle_trajectory
    return row


def summarize(rows: Sequence[dict[str, Any]], group_size: int) -> dict[str, Any]:
    """Per trial (``after_trial_1``, ``after_trial_2``) the figures of the module docstring."""
    summary: dict[str, Any] = {}
    for name in TRIALS:
        probes = [row[name] for row in rows if name in row]
        if not probes:
            continue
        wins = [[won for _, won in p["samples"]] for p in probes]
        oracle_wins = [w for p, w in zip(probes, wins, strict=True) if p["oracle"][1]]
        summary[name] = {
            "failed_trials": len(probes),
            "success": {
                "oracle": statistics.fmean(p["oracle"][1] for p in probes),
                "base_greedy": statistics.fmean(p["greedy"][1] for p in probes),
                "base_sampled": statistics.fmean(statistics.fmean(w) for w in wins),
            },
            "reachable": statistics.fmean(any(w) for w in wins),
            "oracle_reachable": (
                statistics.fmean(any(w) for w in oracle_wins) if oracle_wins else None
            ),
            "zero_signal_share": statistics.fmean(len(set(w[:group_size])) == 1 for w in wins),
        }
    return summary


async def measure_family(
    cfg: Config,
    actor: Actor,
    reflectors: Reflectors,
    samples: int,
    group_size: int,
    concurrency: int = 16,
) -> dict[str, Any]:
    loop = TrialLoop(lambda: make_env_from_config(cfg.env), actor, None, seed=cfg.run.seed)
    semaphore = asyncio.Semaphore(concurrency)

    async def one(task: Task) -> dict[str, Any] | None:
        async with semaphore:
            return await probe_task(cfg, loop, reflectors, task, samples)

    rows = [r for r in await asyncio.gather(*map(one, task_list(cfg))) if r is not None]
    return {"summary": summarize(rows, group_size), "rows": rows}


def check_sizes(samples: int, group_size: int) -> None:
    """A group compares ``group_size`` of a failed trial's ``samples`` (at least two)."""
    if samples < group_size or group_size < 2:
        raise ValueError(f"need samples >= group_size >= 2, got {samples} and {group_size}")


def measure(
    actor_client: LLMClient,
    retro_client: LLMClient,
    families: Sequence[str],
    tasks: int,
    samples: int,
    group_size: int,
    seed: int = 0,
    options: dict[str, dict] | None = None,
) -> dict[str, Any]:
    """:func:`measure_family` for each family, its test tasks drawn with ``seed`` and played at
    its ``options`` (``env.options``; the defaults for a family it does not name)."""
    check_sizes(samples, group_size)
    report: dict[str, Any] = {}
    for family in families:
        cfg = family_config(family, tasks, 3, seed, (options or {}).get(family))
        actor = build_actor(cfg.actor, make_env_from_config(cfg.env), actor_client)
        reflectors = reflectors_for(cfg, retro_client)
        report[family] = asyncio.run(measure_family(cfg, actor, reflectors, samples, group_size))
    return report


def report_lines(report: dict[str, Any]) -> list[str]:
    lines = []
    for family, result in report.items():
        for name, s in result["summary"].items():
            success = " ".join(f"{k} {v:.2f}" for k, v in s["success"].items())
            reach = s["oracle_reachable"]
            lines.append(
                f"{family:<10} {name}: {s['failed_trials']} failed trials | {success} | "
                f"reachable {s['reachable']:.2f} | oracle's wins reachable "
                f"{'-' if reach is None else f'{reach:.2f}'} | "
                f"zero-signal groups {s['zero_signal_share']:.2f}"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--recipe",
        default="default",
        help="zoo recipe (built if not cached); with --zoo-dir, the recipe whose knobs "
        "(env_options) the families are played at",
    )
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument(
        "--zoo-dir", default=None, help="measure this directory's actor/ and retrospective/ instead"
    )
    parser.add_argument("--families", default=",".join(ENVS), help="comma-separated")
    parser.add_argument("--tasks", type=int, default=60, help="test tasks per family")
    parser.add_argument("--samples", type=int, default=8, help="base samples per failed trial")
    parser.add_argument("--group-size", type=int, default=4, help="training's train.group_size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--out", default=None, help="also write every reflection here (JSON)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    try:  # before a zoo build, which may take half an hour
        check_sizes(args.samples, args.group_size)
    except ValueError as exc:
        parser.error(str(exc))

    from retro_ray.llm.torch_backend import TorchBackend
    from retro_ray.zoo.build import build_zoo
    from retro_ray.zoo.models import torch_threads
    from retro_ray.zoo.recipes import get_recipe
    from retro_ray.zoo_cli import family_options

    start = time.monotonic()
    families = [f for f in args.families.split(",") if f]
    options = family_options([], get_recipe(args.recipe))  # the knobs zoo eval plays, typed
    if args.zoo_dir:
        root = Path(args.zoo_dir)
    else:
        root = build_zoo(args.recipe, cache_dir=args.cache_dir, threads=args.threads).root
    with torch_threads(args.threads):
        actor = TorchBackend(root / "actor", max_batch_size=64, name="actor")
        retro = TorchBackend(root / "retrospective", max_batch_size=64, name="retrospective")
        report = measure(
            actor, retro, families, args.tasks, args.samples, args.group_size, args.seed, options
        )
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    result = {
        "recipe": args.recipe,
        "zoo": str(root),
        "tasks": args.tasks,
        "samples": args.samples,
        "group_size": args.group_size,
        "families": {family: r["summary"] for family, r in report.items()},
        "seconds": round(time.monotonic() - start, 1),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print("\n".join(report_lines(report)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
