"""What every job entry point shares: the repository on ``sys.path``, the ``retro-ray`` call,
and the Ray connection (the cluster a job runs on, or a local one outside a job)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_cli(argv: list[str]) -> None:
    """Run one ``retro-ray`` command in this process; a non-zero exit ends the job (FAILED)."""
    from retro_ray.cli import main

    code = main(argv)
    if code:
        raise SystemExit(code)


def config_args(parser: argparse.ArgumentParser) -> None:
    """``--config`` and ``--set``, as the ``retro-ray`` commands take them."""
    parser.add_argument("--config", default=None, help="YAML config file (default: defaults)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value by dotted key; repeatable",
    )


def set_args(sets: list[str]) -> list[str]:
    """``["a=1", "b=2"]`` -> ``["--set", "a=1", "--set", "b=2"]``."""
    return [arg for item in sets for arg in ("--set", item)]


def connect_ray(num_cpus: float | None = None) -> None:
    """Join the job's cluster (``RAY_ADDRESS`` is set in every job driver), or start a local
    Ray with ``num_cpus`` logical CPUs when run outside a job."""
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"])
    else:  # workers import ``jobs`` too: the repository goes on their path
        pythonpath = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=False,
            runtime_env={"env_vars": {"PYTHONPATH": pythonpath, "OMP_NUM_THREADS": "1"}},
        )
