"""What would training a policy from the same reward cost? RLlib PPO against Retroformer.

Reads a finished Retroformer run (``--retroformer-run``, e.g. ``retro-ray demo``'s
``runs/demo/train``): its **episode budget** is what its collection played (the rows of its
experience log: every trial, branches included; the gate's validation episodes are not counted),
and its evaluation table (``eval/table.json``) gives Retroformer's, Reflexion's and ReAct's
success by the last trial, the trials per task, the test tasks per seed and the seeds.

Then, per family (``--family``, repeatable; default the run's environment), runs ``retro-ray
rl-baseline`` (its own process and local Ray) on the same test tasks, trials and seeds, training
for ``--budget-multiple`` times the budget and evaluating every quarter budget, and reports:

- ``rl_success_at_budget``: PPO's test success by the last trial at the first evaluation at or
  past the budget (``rl_episodes_at_budget``: the episodes it had consumed then; PPO consumes
  whole batches, so this can pass the budget by less than one iteration);
- ``rl_episodes_to_match``: the episodes consumed at the first evaluation whose success reaches
  Retroformer's (null when none did within ``rl_budget_tried``; ``rl_best_success`` then says
  how far it got);
- Retroformer's figures beside them. A run stopped before its end (no ``summary.json``) is read
  up to its last evaluation (``rl_run_finished`` false; ``rl_budget_tried`` = that point). A family the Retroformer run did not train on has no
  Retroformer figures (null) and is trained on the same budget.

    python -m benchmarks.rl_baseline --retroformer-run runs/demo/train --json
    python -m benchmarks.rl_baseline --retroformer-run runs/demo/train --family lookup \\
        --existing lookup=runs/rl_baseline/rl_lookup --json   # a finished rl-baseline run

The runs land in ``--out`` (default ``runs/rl_baseline``), one ``rl_<family>`` each.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RAY_START_RETRIES = 4
"""Attempts of a run whose local Ray missed its 30 s start-up window (a loaded machine)."""


def retroformer_figures(run_dir: Path) -> dict[str, Any]:
    from retro_ray.rollout.experience import ExperienceLog

    table_path = run_dir / "eval" / "table.json"
    if not table_path.is_file() or not (run_dir / "experience").is_dir():
        raise SystemExit(
            f"{run_dir} is not an evaluated Retroformer run (needs experience/ and "
            "eval/table.json): run retro-ray train, then retro-ray eval --run RUN_DIR --seeds 3"
        )
    table = json.loads(table_path.read_text())
    episodes = ExperienceLog(run_dir / "experience").read(columns=["task_id"]).num_rows
    best, agents = table["best"], table["agents"]

    def last(agent: str) -> float | None:
        return agents[best[agent]]["success_by_trial"][-1] if agent in best else None

    return {
        "run_dir": str(run_dir),
        "env": table.get("env"),
        "training_episodes": episodes,
        "success": last("retroformer"),
        "reflexion_success": last("reflexion"),
        "react_success": last("react"),
        "label": best.get("retroformer"),
        "trials": table["trials"],
        "seeds": table["seeds"],
        "tasks_per_seed": table.get("tasks_per_seed"),
    }


def run_rl(config: str, family: str, out: Path, budget: int, multiple: float, retro: dict) -> Path:
    """``retro-ray rl-baseline`` in its own process; its run directory."""
    seeds = retro["seeds"]
    eval_every = max(1, budget // 4)
    sets = {
        "run.output_dir": str(out),
        "run.name": f"rl_{family}",
        "env.name": family,
        "env.split": "test",
        "env.seed": seeds[0],
        "env.num_tasks": retro["tasks_per_seed"],
        "trials.max_trials": retro["trials"],
        "rl.eval_seeds": len(seeds),
        "rl.episodes": int(budget * multiple),
        "rl.eval_every": eval_every,
    }
    command = [sys.executable, "-m", "retro_ray.cli", "rl-baseline", "--config", config]
    command += [arg for key, value in sets.items() for arg in ("--set", f"{key}={value}")]
    for attempt in range(RAY_START_RETRIES):
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        sys.stderr.write(done.stdout[-4000:])
        if done.returncode == 0:
            return out / f"rl_{family}"
        if "timed out during startup" not in done.stderr or attempt == RAY_START_RETRIES - 1:
            sys.stderr.write(done.stderr[-4000:])
            raise SystemExit(f"retro-ray rl-baseline on {family} failed ({done.returncode})")
        print(f"[bench] Ray did not start in time; attempt {attempt + 2}", file=sys.stderr)
    raise AssertionError("unreachable")


def compare(rl_dir: Path, budget: int, retro: dict[str, Any] | None) -> dict[str, Any]:
    """The figures of the module docstring from an rl-baseline run directory."""
    curve = [json.loads(x) for x in (rl_dir / "curve.jsonl").read_text().splitlines() if x]
    points = [(int(p["episodes"]), float(p["success_by_trial"][-1])) for p in curve]
    summary_path = rl_dir / "summary.json"  # absent: the run was stopped before its end
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    at_budget = next(((e, s) for e, s in points if e >= budget), None)
    target = retro["success"] if retro else None
    match = next((e for e, s in points if target is not None and s >= target), None)
    return {
        "rl_run_dir": str(rl_dir),
        "episode_budget": budget,
        "rl_success_at_budget": at_budget[1] if at_budget else None,
        "rl_episodes_at_budget": at_budget[0] if at_budget else None,
        "rl_episodes_to_match": match,
        "rl_run_finished": summary is not None,
        "rl_budget_tried": summary["training_episodes"] if summary else points[-1][0],
        "rl_best_success": max(s for _, s in points),
        "rl_final_success_by_trial": (summary or curve[-1])["success_by_trial"],
        "rl_curve": [{"episodes": e, "success": s} for e, s in points],
        "rl_wall_time_s": summary["wall_time_s"] if summary else None,
        "retroformer_success": target,
        "retroformer_training_episodes": retro["training_episodes"] if retro else None,
        "reflexion_success": retro["reflexion_success"] if retro else None,
        "react_success": retro["react_success"] if retro else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--retroformer-run", required=True, help="an evaluated retro-ray train run")
    p.add_argument("--config", default="configs/rl_baseline.yaml", help="rl-baseline config")
    p.add_argument("--family", action="append", default=None, help="environment; repeatable")
    p.add_argument("--budget-multiple", type=float, default=3.0, help="train this x the budget")
    p.add_argument("--out", default="runs/rl_baseline", help="where the rl-baseline runs go")
    p.add_argument(
        "--existing",
        action="append",
        default=[],
        metavar="FAMILY=RL_RUN_DIR",
        help="use a finished rl-baseline run for a family instead of training one",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = p.parse_args(argv)
    if args.budget_multiple < 1:
        p.error("--budget-multiple must be >= 1 (the budget itself is the first figure)")
    existing = dict(item.split("=", 1) for item in args.existing)
    start = time.monotonic()
    retro = retroformer_figures(Path(args.retroformer_run))
    budget = retro["training_episodes"]
    families = args.family or [retro["env"]]
    results = {}
    for family in families:
        if family in existing:
            rl_dir = Path(existing[family])
        else:
            rl_dir = run_rl(
                args.config, family, Path(args.out), budget, args.budget_multiple, retro
            )
        results[family] = compare(rl_dir, budget, retro if family == retro["env"] else None)
    report = {
        "retroformer_run": retro,
        "budget_source": "rows of the Retroformer run's experience log (trials it played)",
        "families": results,
        "seconds": time.monotonic() - start,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for family, r in results.items():
            print(
                f"{family}: PPO {r['rl_success_at_budget']} at {r['rl_episodes_at_budget']} "
                f"episodes (budget {budget}); Retroformer {r['retroformer_success']}; "
                f"PPO reaches it at {r['rl_episodes_to_match']} episodes "
                f"(tried {r['rl_budget_tried']}, best {r['rl_best_success']:.3f})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
