"""Run the trial loop over a split of tasks, log every finished task, and summarise.

The results log (``results.jsonl`` in the output directory) is appended as each task finishes;
a rerun with the same directory skips the tasks already there, so an interrupted evaluation
resumes where it stopped.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from retro_ray.agents.build import build_trial_loop
from retro_ray.agents.results import Progress, ResultsLog, TaskResult, summarize
from retro_ray.agents.trial_loop import TrialLoop
from retro_ray.config import Config, to_dict
from retro_ray.envs.registry import make_env_from_config


def task_list(cfg: Config) -> list:
    env = make_env_from_config(cfg.env)
    tasks_fn = getattr(env, "tasks", None)
    if tasks_fn is None:
        raise ValueError(f"environment {cfg.env.name!r} has no tasks(split, n, seed) method")
    return tasks_fn(cfg.env.split, cfg.env.num_tasks, cfg.env.seed)


async def evaluate(
    cfg: Config,
    out_dir: Path,
    label: str = "eval",
    loop: TrialLoop | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Evaluate ``cfg`` (resuming from ``out_dir`` if it holds results); returns the summary."""
    log = ResultsLog(out_dir / "results.jsonl")
    (out_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    tasks = task_list(cfg)
    wanted = {t.task_id for t in tasks}
    finished = [r for r in log.load() if r.task_id in wanted]
    done_ids = {r.task_id for r in finished}
    todo = [t for t in tasks if t.task_id not in done_ids]
    owned = loop is None
    loop = loop or build_trial_loop(cfg)
    progress = Progress(len(tasks), label) if show_progress else None
    if progress is not None:
        progress.update(finished)

    def record(result: TaskResult) -> None:
        log.append(result)
        if progress is not None:
            progress.update([result])

    try:
        new = await loop.run_tasks(todo, cfg.trials.concurrency, on_result=record)
    finally:
        if owned:  # close HTTP clients on this event loop, before asyncio.run closes it
            await close_clients(loop)
    summary = summarize(finished + new, cfg.trials.max_trials)
    summary.update(env=cfg.env.name, split=cfg.env.split, resumed_tasks=len(finished))
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


async def close_clients(loop: TrialLoop) -> None:
    """Close the LLM clients of a loop's actor and reflector (those that hold connections)."""
    for part in (loop.actor, loop.reflector):
        aclose = getattr(getattr(part, "client", None), "aclose", None)
        if aclose is not None:
            await aclose()


def run_evaluation(cfg: Config, out_dir: Path, label: str = "eval") -> dict[str, Any]:
    return asyncio.run(evaluate(cfg, out_dir, label))
