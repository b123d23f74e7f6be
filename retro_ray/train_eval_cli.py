"""``retro-ray eval``, ``rl-baseline`` and ``train``: the long-running commands that evaluate
agents (the evaluation table, with the rows of RL baselines) and train them (the Retroformer
training loop, or RLlib PPO as the baseline)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from retro_ray.run_config import load_run_config


def add_train_eval_parsers(sub: argparse._SubParsersAction, add_config_args: Any) -> None:
    from retro_ray.agents.build import AGENTS
    from retro_ray.evaluation.conditions import DECODINGS, LLM_AGENTS, TABLE_AGENTS

    ev = sub.add_parser(
        "eval", help="the evaluation table: cumulative success by trial per agent, several seeds"
    )
    add_config_args(ev)
    ev.add_argument(
        "--run",
        default=None,
        metavar="RUN_DIR",
        help="evaluate a training run: its config, models and prod adapter (instead of --config)",
    )
    ev.add_argument(
        "--agent",
        action="append",
        choices=AGENTS,
        default=None,
        help=f"agent to evaluate; repeatable (default: {', '.join(TABLE_AGENTS)})",
    )
    ev.add_argument(
        "--decoding",
        action="append",
        choices=DECODINGS,
        default=None,
        help=f"reflection decoding of {' and '.join(LLM_AGENTS)}; repeatable (default: both; "
        "the headline compares each agent's better one)",
    )
    ev.add_argument("--seeds", type=int, default=1, help="evaluation seeds (test-task draws)")
    ev.add_argument("--tasks", type=int, default=None, help="test tasks per seed (env.num_tasks)")
    ev.add_argument("--trials", type=int, default=None, help="trials per task (trials.max_trials)")
    ev.add_argument("--executor", choices=["local", "ray"], default="local")
    ev.add_argument("--out", default=None, help="output directory (default: <run dir>/eval)")
    ev.add_argument("--json", default=None, metavar="PATH", help="write the table ('-': stdout)")
    ev.add_argument(
        "--baseline",
        action="append",
        default=[],
        metavar="RL_RUN_DIR",
        help="add the rows of a retro-ray rl-baseline run (its eval/table.json); repeatable",
    )
    ev.set_defaults(handler=_eval, long_running=True)

    rl = sub.add_parser(
        "rl-baseline",
        help="RLlib PPO on the environment's reward: train, learning curve, evaluation row",
    )
    add_config_args(rl)
    rl.add_argument("--json", default=None, metavar="PATH", help="write the summary ('-': stdout)")
    rl.set_defaults(handler=_rl_baseline, long_running=True)

    tr = sub.add_parser("train", help="the Retroformer training loop (collect, learn, publish)")
    add_config_args(tr)
    tr.add_argument("--json", default=None, metavar="PATH", help="write the summary ('-': stdout)")
    tr.set_defaults(handler=_train, long_running=True)


def _eval(args: argparse.Namespace) -> int:
    from retro_ray.evaluation import play
    from retro_ray.evaluation.conditions import DECODINGS, TABLE_AGENTS, conditions_for
    from retro_ray.evaluation.table import format_agent_table

    agents = args.agent or list(TABLE_AGENTS)
    decodings = tuple(dict.fromkeys(args.decoding or DECODINGS))
    overrides = list(args.set)
    if args.tasks is not None:
        overrides.append(f"env.num_tasks={args.tasks}")
    if args.trials is not None:
        overrides.append(f"trials.max_trials={args.trials}")
    out = Path(args.out) if args.out else None
    if args.run:
        if args.config or args.executor != "local":
            raise ValueError(
                "--run evaluates a run's local models in this process: drop --config and "
                "--executor (use --config with endpoint models for the ray executor)"
            )
        table = play.evaluate_run(Path(args.run), agents, args.seeds, overrides, out, decodings)
    else:
        cfg = load_run_config(args.config, overrides)
        seeds = play.evaluation_seeds(cfg, args.seeds)
        out = out or cfg.run_dir / "eval"
        conditions = conditions_for(agents, decodings)
        table = play.evaluate(cfg, conditions, seeds, out, executor=args.executor)
    for baseline in args.baseline:
        table = add_baseline(table, Path(baseline), Path(args.run) if args.run else None)
    print(format_agent_table(table))
    print(f"table: {Path(table['log']).parent / 'table.json'}; episodes: {table['log']}")
    _emit_json(table, args.json)
    return 0


def add_baseline(table: dict, baseline_dir: Path, run_dir: Path | None) -> dict:
    """The table with an rl-baseline run's rows, and the environment episodes consumed in
    training: the baseline's, and with ``--run`` the Retroformer collection's (its log's rows)."""
    from retro_ray.evaluation.table import with_baseline

    path = baseline_dir / "eval" / "table.json"
    if not path.is_file():
        raise ValueError(
            f"{baseline_dir} has no eval/table.json; pass the run directory of a finished "
            "retro-ray rl-baseline run"
        )
    episodes = {}
    if run_dir is not None and (run_dir / "experience").is_dir():
        from retro_ray.rollout.experience import ExperienceLog

        episodes["retroformer"] = (
            ExperienceLog(run_dir / "experience").read(columns=["task_id"]).num_rows
        )
    return with_baseline(table, json.loads(path.read_text()), episodes)


def _rl_baseline(args: argparse.Namespace) -> int:
    from retro_ray.evaluation.table import format_agent_table
    from retro_ray.rl.ppo import run_rl_baseline

    summary = run_rl_baseline(load_run_config(args.config, args.set))
    table = json.loads((Path(summary["run_dir"]) / "eval" / "table.json").read_text())
    print(format_agent_table(table))
    _emit_json(summary, args.json)
    print(f"run: {summary['run_dir']} ({summary['training_episodes']} training episodes)")
    return 0


def _train(args: argparse.Namespace) -> int:
    from retro_ray.driver.train import run_train

    summary = run_train(load_run_config(args.config, args.set))
    _emit_json(summary, args.json)
    print(
        f"run: {summary['run_dir']} (train v{summary['train_version']}, "
        f"prod v{summary['prod_version']})"
    )
    return 0


def _emit_json(summary: dict, path: str | None) -> None:
    if path == "-":
        print(json.dumps(summary))
    elif path:
        Path(path).write_text(json.dumps(summary, indent=2))
