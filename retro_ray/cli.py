"""The ``retro-ray`` command line.

Configuration errors, unknown environments and unreachable endpoints end with one clear line
on stderr and a non-zero exit code, never a traceback; nothing finished is lost. The long-running
commands (``serve``, ``train``, ``eval``, ``demo``) stop on SIGTERM as on Ctrl-C: they drain, shut
down the Ray they started and exit 143 (``retro_ray.stopping``).

This module parses and dispatches, and holds ``config`` and ``demo``; the other commands live in
modules of their own: ``env_cli``, ``train_eval_cli`` (``eval``, ``rl-baseline``, ``train``),
``report_cli``, ``zoo_cli``, ``data_cli``, ``registry_cli`` and ``retro_ray.serve.cli``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from retro_ray.config import ConfigError, to_dict
from retro_ray.llm.base import EndpointError
from retro_ray.run_config import load_run_config

EXIT_CONFIG = 2
EXIT_ENDPOINT = 3


def main(argv: list[str] | None = None) -> int:
    # Model loads and saves (gate checks, the zoo build) would draw tqdm bars on the console;
    # the commands print their own progress lines. Read by huggingface_hub at import.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return EXIT_CONFIG
    if getattr(args, "long_running", False):
        return _run_until_stopped(args)
    return _run(args)


def _run_until_stopped(args: argparse.Namespace) -> int:
    """A long-running command: SIGTERM raises ``Terminated`` (a ``KeyboardInterrupt``) so the
    command drains as on Ctrl-C; whatever ends it, the Ray it started is shut down."""
    from retro_ray import stopping

    joined_ray = stopping.ray_connected()  # a job's driver connected before: not ours to stop
    with stopping.sigterm_as_interrupt():
        try:
            code = _run(args)
        except stopping.Terminated:
            code = stopping.EXIT_SIGTERM
        finally:
            if not joined_ray and stopping.ray_connected():
                stopping.shutdown_ray()
        return stopping.EXIT_SIGTERM if stopping.sigterm_received() else code


def _run(args: argparse.Namespace) -> int:
    try:
        return args.handler(args) or 0
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except EndpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ENDPOINT


def _parser() -> argparse.ArgumentParser:
    from retro_ray.data_cli import add_data_parsers
    from retro_ray.env_cli import add_env_parsers
    from retro_ray.registry_cli import add_registry_parsers
    from retro_ray.report_cli import add_report_parser
    from retro_ray.serve.cli import add_serve_parsers
    from retro_ray.train_eval_cli import add_train_eval_parsers
    from retro_ray.zoo_cli import add_zoo_parsers

    parser = argparse.ArgumentParser(prog="retro-ray", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(metavar="COMMAND")

    add_env_parsers(sub)
    add_train_eval_parsers(sub, _add_config_args)
    add_report_parser(sub)

    cfg = sub.add_parser("config", help="show the resolved configuration")
    _add_config_args(cfg)
    cfg.set_defaults(handler=_config_show)

    add_zoo_parsers(sub)
    add_data_parsers(sub)
    add_serve_parsers(sub, _add_config_args)
    add_registry_parsers(sub, _add_config_args)

    demo = sub.add_parser("demo", help="the embedded default end to end")
    demo.add_argument("--tasks", type=int, default=100, help="held-out test tasks per seed")
    demo.add_argument("--seeds", type=int, default=3, help="evaluation seeds")
    demo.add_argument("--output-dir", default="runs/demo")
    demo.add_argument(
        "--config",
        default=None,
        help="training config (default configs/train.yaml; configs/train_families.yaml: one "
        "reflector on lookup, household and shop)",
    )
    _add_config_args_set_only(demo)
    demo.set_defaults(handler=_demo, long_running=True)
    return parser


def _add_config_args_set_only(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a value of the training config by dotted key",
    )


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="YAML file (default: built-in defaults)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value by dotted key, e.g. actor.endpoint.model=x",
    )


def _config_show(args: argparse.Namespace) -> int:
    cfg = load_run_config(args.config, args.set)
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from retro_ray.demo import run_demo

    config = Path(args.config) if args.config else None
    return run_demo(args.tasks, Path(args.output_dir), args.seeds, args.set, config)


if __name__ == "__main__":
    sys.exit(main())
