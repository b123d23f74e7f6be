"""``retro-ray zoo eval``: how much the frozen tiny actor gains from each kind of reflection.

On test-split tasks of each built-in environment (never played while building the zoo), the actor
(greedy) runs up to ``trials`` trials per task through the same evaluation path as
``retro-ray eval`` (:mod:`retro_ray.evaluation.play`: the trial loop, the Parquet log, the
table), with the agents ``react``, ``vague``, ``reflexion`` (the retrospective base, greedy and
sampled), ``trajectory-oracle`` and ``ground-truth-oracle``. The figure is cumulative success
after the last trial.

What the zoo must show: the trajectory oracle far above no reflection (the actor follows advice),
and the base reflector at its better decoding clearly below the trajectory oracle: that gap is
what Retroformer learns to close. All conditions and environments run at once, so the torch
backends batch many requests.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from retro_ray.config import Config
from retro_ray.evaluation.conditions import conditions_for, model_identity
from retro_ray.evaluation.play import Clients, play_and_tabulate
from retro_ray.llm.base import LLMClient
from retro_ray.rollout.experience import ExperienceLog
from retro_ray.run_config import load_run_config
from retro_ray.zoo.recipes import ENVS

AGENTS = ("react", "vague", "reflexion", "trajectory-oracle", "ground-truth-oracle")
BASE = "retrospective-base"
"""The model name the base reflector is known by in this evaluation."""
ACTOR_MAX_TOKENS = 24
REFLECTOR_MAX_TOKENS = 48
LONG_REFLECTIONS = {"alfworld": 96, "hotpotqa": 96}
"""Reflection token limits of the benchmarks, whose reflections list places or titles and fill
the 300 characters a reflection may hold (``reflector.max_chars``): about 85 tokens."""


def family_config(
    env: str, tasks: int, trials: int, seed: int, options: dict | None = None
) -> Config:
    """The evaluation configuration of one family: greedy actor, the base as reflector."""
    overrides = [
        f"env.name={env}",
        f"env.num_tasks={tasks}",
        f"env.seed={seed}",
        f"trials.max_trials={trials}",
        f"actor.endpoint.max_tokens={ACTOR_MAX_TOKENS}",
        f"reflector.endpoint.max_tokens={LONG_REFLECTIONS.get(env, REFLECTOR_MAX_TOKENS)}",
        f"reflector.endpoint.model={BASE}",
        f"run.seed={seed}",
    ]
    overrides += [f"env.options.{k}={v}" for k, v in (options or {}).items()]
    return load_run_config(None, overrides)


def evaluate_reflections(
    actor: LLMClient,
    retro: LLMClient,
    out_dir: Path,
    tasks: int = 50,
    trials: int = 3,
    envs: tuple[str, ...] = ENVS,
    seed: int = 0,
    identities: dict[str, str] | None = None,
    options: dict[str, dict] | None = None,
    progress: bool = True,
    agents: tuple[str, ...] = AGENTS,
    split: str = "test",
) -> dict[str, Any]:
    """Cumulative success after ``trials`` trials per agent (and decoding) and environment;
    every trial lands in ``<out_dir>/experience`` (a rerun resumes). ``options`` holds
    per-family difficulty knobs (``env.options``)."""
    start = time.monotonic()
    cfgs = [family_config(e, tasks, trials, seed, (options or {}).get(e)) for e in envs]
    tables = play_and_tabulate(
        cfgs,
        conditions_for(agents),
        [seed],
        ExperienceLog(out_dir / "experience"),
        clients=Clients(actor=actor, reflectors={"reflexion": retro}),
        identities=identities,
        progress=progress,
        split=split,
    )
    families = {
        env: {
            "success": {label: row["success_by_trial"][-1] for label, row in t["agents"].items()},
            "success_by_trial": {
                label: row["success_by_trial"] for label, row in t["agents"].items()
            },
            "ci95": {label: row["ci95"] for label, row in t["agents"].items()},
            "best": t["best"],
            "options": (options or {}).get(env, {}),
        }
        for env, t in zip(envs, tables, strict=True)
    }
    labels = list(next(iter(families.values()))["success"])
    mean = {lab: statistics.fmean(f["success"][lab] for f in families.values()) for lab in labels}
    return {
        "families": families,
        "mean": mean,
        "tasks": tasks,
        "trials": trials,
        "envs": list(envs),
        "log": str(out_dir / "experience"),
        "seconds": round(time.monotonic() - start, 1),
    }


def evaluate_zoo(
    actor_dir: str | Path,
    retrospective_dir: str | Path,
    out_dir: Path,
    tasks: int = 50,
    trials: int = 3,
    seed: int = 0,
    threads: int = 1,
    options: dict[str, dict] | None = None,
    envs: tuple[str, ...] = ENVS,
) -> dict[str, Any]:
    """Load both models into local torch backends and run :func:`evaluate_reflections`."""
    from retro_ray.llm.torch_backend import TorchBackend
    from retro_ray.zoo.models import torch_threads

    with torch_threads(threads):
        actor = TorchBackend(actor_dir, max_batch_size=64, name="actor")
        retro = TorchBackend(retrospective_dir, max_batch_size=64, name="retrospective")
        identities = {"actor": model_identity(actor_dir), BASE: model_identity(retrospective_dir)}
        return evaluate_reflections(
            actor,
            retro,
            out_dir,
            tasks,
            trials,
            envs,
            seed=seed,
            identities=identities,
            options=options,
        )


def best_base(family: dict[str, Any]) -> float:
    """The base reflector's success at its better decoding."""
    return family["success"][family["best"]["reflexion"]]


def format_report(report: dict[str, Any]) -> str:
    """One row per environment, one column per agent (and decoding)."""
    labels = list(report["mean"])
    width = max(len(lab) for lab in labels) + 2
    header = f"{'env':<11}" + "".join(f"{lab:>{width}}" for lab in labels)
    lines = [header, "-" * len(header)]
    rows = {**{e: f["success"] for e, f in report["families"].items()}, "mean": report["mean"]}
    for env, values in rows.items():
        lines.append(f"{env:<11}" + "".join(f"{values[lab]:>{width}.2f}" for lab in labels))
    return "\n".join(lines)
