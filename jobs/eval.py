"""``ray job submit`` entry point: evaluate one or more agents, one table of success by trial.

    ray job submit --working-dir . --runtime-env jobs/runtime_env/eval.yaml -- \\
        python jobs/eval.py --config configs/builtin_scripted.yaml \\
            --agent react --agent trajectory-oracle --set run.output_dir=/shared/runs

The driver runs ``retro-ray eval`` once for every agent and seed, its episodes on the cluster's
rollout pool (``--executor ray``; resumable: a rerun skips finished tasks); one row per agent goes
to ``<run dir>/eval-table.parquet`` and ``eval-table.md`` (or ``--table-dir``), and the Markdown
is printed to the job's log.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``jobs`` and ``retro_ray`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.common import config_args, run_cli, set_args
from jobs.table import agent_rows, write_table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    config_args(parser)
    parser.add_argument(
        "--agent",
        action="append",
        default=[],
        help="agent to evaluate (react, reflexion, retroformer, ...); repeatable; default: all "
        "five of the table",
    )
    parser.add_argument("--seeds", type=int, default=1, help="evaluation seeds")
    parser.add_argument(
        "--executor", choices=["local", "ray"], default="ray", help="ray: the rollout pool"
    )
    parser.add_argument(
        "--table-dir", default=None, help="where the table goes (default: the run directory)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from retro_ray.run_config import load_run_config

    cfg = load_run_config(args.config, args.set)  # fail fast, before any agent runs
    table_dir = Path(args.table_dir) if args.table_dir else cfg.run_dir
    table_path = cfg.run_dir / "eval" / "table-job.json"
    table_path.parent.mkdir(parents=True, exist_ok=True)
    cli_args = ["--config", args.config] if args.config else []
    for agent in args.agent:
        cli_args += ["--agent", agent]
    cli_args += ["--seeds", str(args.seeds), "--executor", args.executor]
    run_cli(["eval", *cli_args, *set_args(args.set), "--json", str(table_path)])
    table = json.loads(table_path.read_text())
    rows = [{"run": cfg.run.name, "status": "ok", **row} for row in agent_rows(table)]
    gap = table.get("gap_closed")
    extra = f"\ngap closed (Reflexion -> trajectory oracle): {gap:.2f}\n" if gap is not None else ""
    parquet, md = write_table(rows, table_dir, "eval-table", f"Evaluation: {cfg.run.name}", extra)
    print(md.read_text())
    print(json.dumps({"parquet": str(parquet), "markdown": str(md)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
