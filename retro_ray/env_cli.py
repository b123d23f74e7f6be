"""``retro-ray env list|play``: the registered environments, and playing one with a reference
policy (expert, random or scripted) to check it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from retro_ray.run_config import load_run_config


def add_env_parsers(sub: argparse._SubParsersAction) -> None:
    env = sub.add_parser("env", help="list or play environments").add_subparsers(metavar="ACTION")
    env_list = env.add_parser("list", help="registered environments")
    env_list.set_defaults(handler=_env_list)
    play = env.add_parser("play", help="play an environment with a reference policy")
    play.add_argument("name", help="registered name or pkg.module:Class")
    play.add_argument("--policy", choices=["expert", "random", "scripted"], default="expert")
    play.add_argument("--tasks", type=int, default=20, help="number of tasks")
    play.add_argument("--split", default="test", choices=["train", "validation", "test"])
    play.add_argument("--data", default=None, help="data file or directory, for data-backed envs")
    play.add_argument("--seed", type=int, default=0)
    play.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment option (difficulty knob); repeatable",
    )
    play.add_argument("--json", action="store_true", help="print one JSON object")
    play.set_defaults(handler=_env_play)


def _env_list(args: argparse.Namespace) -> int:
    from retro_ray.envs.registry import env_names, get_spec

    for name in env_names():
        print(f"{name:12s} {get_spec(name).description}")
    return 0


def _env_play(args: argparse.Namespace) -> int:
    from retro_ray.evaluation.conditions import Condition
    from retro_ray.evaluation.play import evaluate, read_rows
    from retro_ray.rollout.experience import ExperienceLog

    overrides = [
        f"env.name={args.name}",
        f"env.split={args.split}",
        f"env.num_tasks={args.tasks}",
        f"env.seed={args.seed}",
        f"actor.policy={args.policy}",
        "reflector.kind=none",
        "trials.max_trials=1",
        f"run.seed={args.seed}",
    ]
    overrides += [f"env.options.{kv}" for kv in args.option]
    if args.data:
        overrides.append(f"env.data_path={args.data}")
    cfg = load_run_config(None, overrides)
    out = Path(cfg.run.output_dir) / "play" / f"{args.name.replace(':', '_')}-{args.policy}"
    table = evaluate(
        cfg, [Condition("react")], [cfg.env.seed], out, progress=not args.json, split=args.split
    )
    log = ExperienceLog(out / "experience")
    rows = read_rows(log, table["conditions"], [cfg.env.seed], columns=("task_id", "return_after"))
    row = table["agents"]["react"]
    result = {
        "env": args.name,
        "policy": args.policy,
        "split": args.split,
        "tasks": row["tasks"],
        "mean_return": sum(r["return_after"] for r in rows) / max(1, len(rows)),
        "success_rate": row["success_by_trial"][-1],
        "log": table["log"],
    }
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))
    return 0
