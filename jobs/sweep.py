"""``ray job submit`` entry point: a sweep over seeds and hyperparameters, one results table.

    ray job submit --working-dir . --runtime-env jobs/runtime_env/sweep.yaml -- \\
        python jobs/sweep.py --name lr-seeds --command train --config configs/train.yaml \\
            --grid learner.lr=1e-3,2e-3 --grid run.seed=0,1,2 --output-dir /shared/sweeps

Each point of the grid (the cartesian product of the ``--grid`` options) is one Ray Tune trial
running ``retro-ray <command>`` with the point's overrides (``jobs/trial.py``). Results: one row
per point in ``<output-dir>/<name>/sweep.parquet`` and ``sweep.md`` (the Markdown also holds the
mean and std over seeds of each hyperparameter setting), the points' runs under ``runs/``, Tune's
own state under ``tune/``.

Why Tune function trainables, not ``Tuner(trainer)`` nor one Ray job per point:
- under Ray Train V2, ``Tuner(TorchTrainer)`` is unsupported; the supported way is a function
  trainable that calls the trainer's ``fit()`` itself, which is what ``retro-ray train`` does;
- Tune gives what a sweep needs and plain jobs do not: a concurrency limit, resources per trial,
  retries of failed trials, a resumable experiment and one result grid to gather;
- one job per point would need the dashboard's address inside a job, a second driver per point,
  and a shared file system to gather results.
Serving constrains concurrency: Serve runs one application per name per cluster behind one HTTP
proxy. Training points therefore get their own ``serve.app_name`` and, by default, run one at a
time (``--max-concurrent 1``); evaluation points (no Serve) run side by side.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``jobs`` and ``retro_ray`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.common import config_args, connect_ray
from jobs.grid import SEED_KEYS, expand, non_seed_keys, overrides, parse_grid
from jobs.table import Row, markdown, seed_means, write_table
from jobs.trial import SweepSpec, run_point


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="sweep", help="sweep name (runs are <name>-<i>)")
    parser.add_argument("--command", choices=["eval", "train"], default="eval")
    config_args(parser)
    parser.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="a swept config key and its values (comma-separated or a YAML list); repeatable",
    )
    parser.add_argument("--agent", default="reflexion", help="agent of eval points")
    parser.add_argument("--output-dir", default="runs/sweeps", help="shared storage on clusters")
    parser.add_argument(
        "--max-concurrent", type=int, default=None, help="points at once (eval: 2, train: 1)"
    )
    parser.add_argument("--trial-cpus", type=float, default=0.5, help="CPUs a trial reserves")
    parser.add_argument("--max-failures", type=int, default=0, help="retries of a failed point")
    parser.add_argument("--num-cpus", type=float, default=None, help="CPUs of a local Ray")
    return parser.parse_args(argv)


def build_spec(args: argparse.Namespace) -> SweepSpec:
    """The sweep's points, each checked against the config tree before anything runs."""
    from retro_ray.run_config import load_run_config

    points = expand(parse_grid(args.grid))
    for point in points:
        load_run_config(args.config, [*args.set, *overrides(point)])
    return SweepSpec(
        name=args.name,
        command=args.command,
        sweep_dir=str(Path(args.output_dir).resolve() / args.name),
        points=points,
        config_text=Path(args.config).read_text() if args.config else None,
        sets=list(args.set),
        agent=args.agent,
    )


def run_sweep(spec: SweepSpec, max_concurrent: int, trial_cpus: float, max_failures: int) -> Any:
    """Run every point as a Tune trial; returns Tune's ``ResultGrid``."""
    from ray import tune

    trainable = tune.with_resources(tune.with_parameters(run_point, spec=spec), {"cpu": trial_cpus})
    tuner = tune.Tuner(
        trainable,
        param_space={"index": tune.grid_search(list(range(len(spec.points))))},
        tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent),
        run_config=tune.RunConfig(
            name=spec.name,
            storage_path=str(Path(spec.sweep_dir) / "tune"),
            failure_config=tune.FailureConfig(max_failures=max_failures),
            verbose=1,
        ),
    )
    return tuner.fit()


def gather(spec: SweepSpec, results: Any) -> list[Row]:
    """One row per point, in grid order: the point, its status, the metrics it reported."""
    rows: dict[int, Row] = {}
    for result in results:
        index = int(result.config["index"])
        row: Row = {"point": index, "run": spec.run_name(index), **spec.points[index]}
        if result.error is None and "summary_json" in (result.metrics or {}):
            row["status"] = "ok"
            row.update(json.loads(result.metrics["summary_json"]))
        else:
            row["status"] = "error"
            row["error"] = str(result.error).splitlines()[0][:200] if result.error else "no report"
        rows[index] = row
    return [rows[i] for i in sorted(rows)]


def seed_section(spec: SweepSpec, rows: list[Row]) -> str:
    """Markdown of the means over seeds, when seeds were swept."""
    keys = list(spec.points[0]) if spec.points else []
    if not any(k in SEED_KEYS for k in keys):
        return ""
    metrics = [c for c in rows[0] if c.startswith("success@") or c == "mean_return"] if rows else []
    means = seed_means(rows, non_seed_keys(keys), metrics)
    return f"\n## Mean and std over seeds\n\n{markdown(means)}\n" if means else ""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    spec = build_spec(args)
    max_concurrent = args.max_concurrent or (1 if spec.command == "train" else 2)
    connect_ray(args.num_cpus)
    results = run_sweep(spec, max_concurrent, args.trial_cpus, args.max_failures)
    rows = gather(spec, results)
    parquet, md = write_table(
        rows,
        Path(spec.sweep_dir),
        "sweep",
        f"Sweep {spec.name}: {spec.command}",
        seed_section(spec, rows),
    )
    print(md.read_text())
    print(json.dumps({"parquet": str(parquet), "markdown": str(md), "points": len(rows)}))
    failed = [r["run"] for r in rows if r["status"] != "ok"]
    if failed:
        print(f"failed points: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
