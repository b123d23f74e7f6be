"""``ray job submit`` entry point: evaluate one or more agents, one table of success by trial.

    ray job submit --working-dir . --runtime-env jobs/runtime_env/eval.yaml -- \\
        python jobs/eval.py --config configs/builtin_scripted.yaml \\
            --agent react --agent trajectory-oracle --set run.output_dir=/shared/runs

Each agent runs ``retro-ray eval`` in this driver (resumable: a rerun skips finished tasks); the
summaries are gathered into ``<run dir>/eval-table.parquet`` and ``eval-table.md`` (or
``--table-dir``), and the Markdown is printed to the job's log.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``jobs`` and ``retro_ray`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.common import config_args, run_cli, set_args
from jobs.table import summary_metrics, write_table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    config_args(parser)
    parser.add_argument(
        "--agent",
        action="append",
        default=[],
        help="agent to evaluate (react, reflexion, retroformer, ...); repeatable; default reflexion",
    )
    parser.add_argument(
        "--table-dir", default=None, help="where the table goes (default: the run directory)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from retro_ray.config import load_config

    cfg = load_config(args.config, args.set)  # fail fast, before any agent runs
    table_dir = Path(args.table_dir) if args.table_dir else cfg.run_dir
    rows = []
    for agent in args.agent or ["reflexion"]:
        summary_path = cfg.run_dir / f"eval-{agent}" / "summary-job.json"
        summary_path.parent.mkdir(parents=True, exist_ok=True)
        cli_args = ["--config", args.config] if args.config else []
        run_cli(
            ["eval", *cli_args, *set_args(args.set), "--agent", agent, "--json", str(summary_path)]
        )
        summary = json.loads(summary_path.read_text())
        rows.append(
            {"run": cfg.run.name, "agent": agent, "status": "ok", **summary_metrics(summary)}
        )
    parquet, md = write_table(rows, table_dir, "eval-table", f"Evaluation: {cfg.run.name}")
    print(md.read_text())
    print(json.dumps({"parquet": str(parquet), "markdown": str(md)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
