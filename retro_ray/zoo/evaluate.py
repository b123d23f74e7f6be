"""``retro-ray zoo eval``: how much the frozen tiny actor gains from each kind of reflection.

On test-split tasks of each built-in environment (never played while building the zoo), the actor
(greedy) runs up to ``trials`` trials per task through the real trial loop, with reflections from:
nobody (ReAct), the vague reflector, the retrospective base sampled at temperature 1 and top_p 1
(the policy Retroformer will train), the trajectory oracle and the ground-truth oracle. The figure
is cumulative success after the last trial.

What the zoo must show: the trajectory oracle far above no reflection (the actor follows advice),
and the base reflector clearly below the trajectory oracle: that gap is what Retroformer learns to
close. All conditions and environments run at once, so the torch backends batch many requests.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from retro_ray.agents.actors import LLMActor
from retro_ray.agents.reflectors import (
    GroundTruthReflector,
    LLMReflector,
    Reflector,
    TrajectoryOracleReflector,
    VagueReflector,
)
from retro_ray.agents.results import TaskResult, summarize
from retro_ray.agents.trial_loop import TrialLoop
from retro_ray.config import ActorConfig, ReflectorConfig
from retro_ray.envs.registry import make_env
from retro_ray.llm.base import LLMClient, SamplingParams
from retro_ray.zoo.recipes import ENVS

CONDITIONS = (
    "no_reflection",
    "vague_reflection",
    "base_reflector",
    "trajectory_oracle",
    "ground_truth_oracle",
)
ACTOR_SAMPLING = SamplingParams(max_tokens=24, temperature=0.0, stop=("\n",))
REFLECTOR_MAX_TOKENS = 48


def reflector_for(condition: str, retro: LLMClient, seed: int) -> Reflector | None:
    cfg = ReflectorConfig()
    if condition == "no_reflection":
        return None
    if condition == "vague_reflection":
        return VagueReflector()
    if condition == "trajectory_oracle":
        return TrajectoryOracleReflector()
    if condition == "ground_truth_oracle":
        return GroundTruthReflector()
    if condition != "base_reflector":
        raise ValueError(f"unknown condition {condition!r}")
    sampling = SamplingParams(
        max_tokens=REFLECTOR_MAX_TOKENS,
        temperature=1.0,
        top_p=1.0,
        stop=("\n",),
        seed=seed,
    )
    return LLMReflector(
        retro,
        sampling,
        cfg.instruction,
        cfg.trajectory_max_chars,
        cfg.max_chars,
        name="base",
    )


async def evaluate_reflections(
    actor: LLMClient,
    retro: LLMClient,
    tasks: int = 50,
    trials: int = 3,
    envs: tuple[str, ...] = ENVS,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Cumulative success after ``trials`` trials per condition and environment."""
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    actor_cfg = ActorConfig()
    start = time.monotonic()
    total = tasks * len(envs) * len(CONDITIONS)
    done = 0

    def progress(_: TaskResult) -> None:
        nonlocal done
        done += 1
        if done % max(1, total // 10) == 0 or done == total:
            elapsed = time.monotonic() - start
            eta = elapsed / done * (total - done)
            log(f"[zoo eval] task chains {done}/{total} | {elapsed:.0f}s | ETA {eta:.0f}s")

    async def run(env_name: str, condition: str) -> list[TaskResult]:
        loop = TrialLoop(
            env_factory=lambda: make_env(env_name),
            actor=LLMActor(
                actor, ACTOR_SAMPLING, actor_cfg.instruction, actor_cfg.scratchpad_max_chars
            ),
            reflector=reflector_for(condition, retro, seed),
            max_trials=trials,
            seed=seed,
        )
        task_list = make_env(env_name).tasks("test", tasks, seed=seed)  # type: ignore[attr-defined]
        return await loop.run_tasks(task_list, concurrency=tasks, on_result=progress)

    keys = [(env, condition) for env in envs for condition in CONDITIONS]
    outcomes = await asyncio.gather(*(run(env, condition) for env, condition in keys))
    per_env: dict[str, dict[str, Any]] = {env: {} for env in envs}
    examples: list[str] = []
    for (env, condition), results in zip(keys, outcomes, strict=True):
        summary = summarize(results, trials)
        per_env[env][f"success_{condition}"] = summary["success_rate"]
        per_env[env].setdefault("success_by_trial", {})[condition] = summary["success_by_trial"]
        if condition == "base_reflector":
            examples += [t.reflection for r in results[:3] for t in r.trials if t.reflection]
    report: dict[str, Any] = {
        f"success_{c}": sum(per_env[e][f"success_{c}"] for e in envs) / len(envs)
        for c in CONDITIONS
    }
    report.update(per_env=per_env, tasks=tasks, trials=trials, envs=list(envs))
    report["seconds"] = round(time.monotonic() - start, 1)
    for text in examples[:6]:
        log(f"[zoo eval] base reflection: {text}")
    return report


def evaluate_zoo(
    actor_dir: str | Path,
    retrospective_dir: str | Path,
    tasks: int = 50,
    trials: int = 3,
    seed: int = 0,
    threads: int = 1,
) -> dict[str, Any]:
    """Load both models into local torch backends and run :func:`evaluate_reflections`."""
    import torch

    from retro_ray.llm.torch_backend import TorchBackend

    torch.set_num_threads(threads)
    actor = TorchBackend(actor_dir, max_batch_size=64, name="actor")
    retro = TorchBackend(retrospective_dir, max_batch_size=64, name="retrospective")
    return asyncio.run(evaluate_reflections(actor, retro, tasks=tasks, trials=trials, seed=seed))


def format_report(report: dict[str, Any]) -> str:
    """One row per environment, one column per condition."""
    short = {c: c.replace("_reflection", "").replace("_oracle", "") for c in CONDITIONS}
    header = f"{'env':<11}" + "".join(f"{short[c]:>14}" for c in CONDITIONS)
    lines = [header, "-" * len(header)]
    rows = {**report["per_env"], "mean": report}
    for env, values in rows.items():
        lines.append(f"{env:<11}" + "".join(f"{values[f'success_{c}']:>14.2f}" for c in CONDITIONS))
    return "\n".join(lines)
