"""The learning effect with uncertainty that includes training: k independent training runs.

Runs ``retro-ray train`` k times (a fresh process each, the product's own loop: Serve, the rollout
pool, the Ray Train learner, the registry and the gate), each with its own training seed, then
evaluates every run's trained adapter on the *same* test tasks with ``retro-ray eval``'s code
(:func:`retro_ray.evaluation.play.evaluate_run`). All runs share one evaluation log: what does
not depend on training (ReAct, Reflexion = the frozen base, the oracles) is played once and
reused, since its partitions are keyed by content; each run's Retroformer has its own.

Per family (the environments the training config names), the output holds the mean success by
trial of every condition over the runs, each agent's better decoding, the paired difference
Retroformer - Reflexion at the last trial with a 95% interval from a bootstrap over training runs
and tasks (``diff``, ``diff_ci95``, ``diff_ci95_low``) and ``gap_closed`` with its interval.

    python -m benchmarks.learning_effect --json                      # 3 runs of configs/train.yaml
    python -m benchmarks.learning_effect --runs 2 --config configs/train_tiny.yaml \\
        --tasks 20 --json                                             # a smoke run

A rerun with the same ``--out`` resumes: finished training runs and evaluated episodes are kept.
``--existing RUN_DIR`` counts a finished run of the same config (``retro-ray demo``'s
``runs/demo/train``; ``make demo``'s ``runs/demo_families/families`` with
``--config configs/train_families.yaml``; training seed 0) as one of the k; the others get the next free seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def train(config: str, out: Path, run: int, seed: int, sets: list[str]) -> Path:
    """One training run in its own process (its own local Ray); its run directory."""
    summary = out / f"train-{run}.json"
    if summary.is_file():
        return Path(json.loads(summary.read_text())["run_dir"])
    cmd = [sys.executable, "-m", "retro_ray.cli", "train", "--config", config]
    for override in [
        *sets,
        f"run.output_dir={out}",
        f"run.name=run{run}",
        f"run.seed={seed}",
        f"serve.app_name=effect{run}",
    ]:
        cmd += ["--set", override]
    log(f"training run {run} (seed {seed}): {' '.join(cmd[2:])}")
    log_file = out / f"train-{run}.log"
    with log_file.open("w") as f:
        done = subprocess.run(
            [*cmd, "--json", str(summary)], cwd=REPO, stdout=f, stderr=subprocess.STDOUT
        )
    if done.returncode != 0:
        raise RuntimeError(f"training run {run} failed (exit {done.returncode}); see {log_file}")
    return Path(json.loads(summary.read_text())["run_dir"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/train.yaml", help="training configuration")
    p.add_argument("--runs", type=int, default=3, help="independent training runs (k >= 3)")
    p.add_argument("--seed", type=int, default=0, help="training seed of run 0 (run i: seed+i)")
    p.add_argument("--tasks", type=int, default=100, help="test tasks per evaluation seed")
    p.add_argument("--eval-seeds", type=int, default=1, help="evaluation seeds (task draws)")
    p.add_argument("--trials", type=int, default=3, help="trials per test task")
    p.add_argument("--out", default="runs/learning_effect", help="runs and the shared eval log")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--existing",
        action="append",
        default=[],
        metavar="RUN_DIR",
        help="a finished training run of the same config (e.g. retro-ray demo's runs/demo/train) that "
        "counts as one of the k runs; its seed must differ from the others'; repeatable",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be >= 1")

    from retro_ray.evaluation.conditions import TABLE_AGENTS
    from retro_ray.evaluation.play import evaluate_run, read_rows
    from retro_ray.rollout.experience import ExperienceLog
    from retro_ray.run_config import load_run_config

    load_run_config(args.config, args.set)  # a bad config fails here, before any training
    start = time.monotonic()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    run_dirs = [Path(d).resolve() for d in args.existing]
    seeds = [json.loads((d / "config.json").read_text())["run"]["seed"] for d in run_dirs]
    if len(set(seeds)) != len(seeds):
        p.error(f"--existing runs share a training seed ({seeds}): they are not independent")
    candidates = (s for s in range(args.seed, args.seed + 10 * args.runs) if s not in seeds)
    for i in range(len(run_dirs), args.runs):
        seed = next(candidates)
        run_dirs.append(train(args.config, out, i, seed, args.set))
        seeds.append(seed)
    eval_dir = out / "eval"
    overrides = [f"env.num_tasks={args.tasks}", f"trials.max_trials={args.trials}"]
    tables, rows_by_run = [], []
    for i, run_dir in enumerate(run_dirs):
        log(f"evaluating run {i} ({run_dir})")
        table = evaluate_run(
            run_dir, TABLE_AGENTS, args.eval_seeds, overrides, eval_dir, progress=not args.json
        )
        tables.append(table)
        rows_by_run.append(
            read_rows(ExperienceLog(eval_dir / "experience"), table["conditions"], table["seeds"])
        )
    # One entry per family: a mixture's families each, else the one environment.
    names = list(tables[0].get("families") or [tables[0]["env"]])
    families = {
        name: family_effect(
            [t["families"][name] if "families" in t else t for t in tables],
            [[r for r in rows if len(names) == 1 or r["env"] == name] for rows in rows_by_run],
            args.trials,
        )
        for name in names
    }
    result: dict[str, Any] = {
        "env": tables[0]["env"],
        "families": families,
        "training_runs": args.runs,
        "train_seeds": seeds,
        "eval_seeds": tables[0]["seeds"],
        "tasks_per_seed": args.tasks,
        "trials": args.trials,
        "config": args.config,
        "commit": _commit(),
        "seconds": round(time.monotonic() - start, 1),
    }
    (out / "learning_effect.json").write_text(json.dumps(result, indent=2))
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2))
    return 0


def family_effect(
    tables: list[dict[str, Any]], rows_by_run: list[list[dict[str, Any]]], trials: int
) -> dict[str, Any]:
    """One family's figures over the training runs: mean success by trial of every condition,
    each agent's better decoding and the paired effect with its interval over runs and tasks."""
    from retro_ray.evaluation.table import best_decodings, paired_effect, solved_by_last_trial

    labels = list(tables[0]["agents"])
    curves = {
        lab: [
            sum(t["agents"][lab]["success_by_trial"][k] for t in tables) / len(tables)
            for k in range(trials)
        ]
        for lab in labels
    }
    best = best_decodings({lab: c[-1] for lab, c in curves.items()})
    solved = {i: solved_by_last_trial(rows, trials) for i, rows in enumerate(rows_by_run)}
    effect = paired_effect(solved, best) or {}
    return {
        "success_by_trial": curves,
        "per_run_last_trial": {
            lab: [t["agents"][lab]["success_by_trial"][-1] for t in tables] for lab in labels
        },
        "best": best,
        **effect,
        "diff_ci95_low": effect["diff_ci95"][0] if effect else None,
        "adapters": [t.get("adapter") for t in tables],
    }


def _commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return None


def log(message: str) -> None:
    print(f"[learning_effect] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no tqdm bar per model load
    sys.exit(main())
