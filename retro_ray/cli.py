"""The ``retro-ray`` command line.

Configuration errors, unknown environments and unreachable endpoints end with one clear line
on stderr and a non-zero exit code, never a traceback; nothing finished is lost. The long-running
commands (``serve``, ``train``, ``eval``, ``demo``) stop on SIGTERM as on Ctrl-C: they drain, shut
down the Ray they started and exit 143 (``retro_ray.stopping``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from retro_ray.config import ConfigError, to_dict
from retro_ray.llm.base import EndpointError
from retro_ray.run_config import load_run_config

EXIT_CONFIG = 2
EXIT_ENDPOINT = 3


def main(argv: list[str] | None = None) -> int:
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
    parser = argparse.ArgumentParser(prog="retro-ray", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(metavar="COMMAND")

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

    ev = sub.add_parser(
        "eval", help="the evaluation table: cumulative success by trial per agent, several seeds"
    )
    _add_config_args(ev)
    from retro_ray.agents.build import AGENTS
    from retro_ray.evaluation.conditions import DECODINGS, LLM_AGENTS, TABLE_AGENTS

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
    _add_config_args(rl)
    rl.add_argument("--json", default=None, metavar="PATH", help="write the summary ('-': stdout)")
    rl.set_defaults(handler=_rl_baseline, long_running=True)

    tr = sub.add_parser("train", help="the Retroformer training loop (collect, learn, publish)")
    _add_config_args(tr)
    tr.add_argument("--json", default=None, metavar="PATH", help="write the summary ('-': stdout)")
    tr.set_defaults(handler=_train, long_running=True)

    _add_report_parser(sub)

    cfg = sub.add_parser("config", help="show the resolved configuration")
    _add_config_args(cfg)
    cfg.set_defaults(handler=_config_show)

    _add_zoo_parsers(sub)
    _add_data_parsers(sub)

    from retro_ray.registry_cli import add_registry_parsers
    from retro_ray.serve.cli import add_serve_parsers

    add_serve_parsers(sub, _add_config_args)
    add_registry_parsers(sub, _add_config_args)

    demo = sub.add_parser("demo", help="the embedded default end to end")
    demo.add_argument("--tasks", type=int, default=100, help="held-out test tasks per seed")
    demo.add_argument("--seeds", type=int, default=3, help="evaluation seeds")
    demo.add_argument("--output-dir", default="runs/demo")
    _add_config_args_set_only(demo)
    demo.set_defaults(handler=_demo, long_running=True)
    return parser


def _add_report_parser(sub: argparse._SubParsersAction) -> None:
    from retro_ray.report.data import Prices

    rep = sub.add_parser(
        "report", help="HTML report of a run: plots, success by trial, tokens per point of success"
    )
    rep.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (run.output_dir/run.name)")
    rep.add_argument("--out", default=None, metavar="DIR", help="default: RUN_DIR/report")
    for part in ("prompt", "completion"):
        rep.add_argument(
            f"--price-{part}",
            type=float,
            default=getattr(Prices, f"{part}_per_mtok"),
            metavar="USD_PER_MTOK",
            help=f"actor {part} tokens, USD per million (default: %(default)s)",
        )
        rep.add_argument(
            f"--price-reflector-{part}",
            type=float,
            default=None,
            metavar="USD_PER_MTOK",
            help=f"reflector {part} tokens, USD per million (default: the actor's price)",
        )
    rep.add_argument(
        "--baseline",
        action="append",
        default=[],
        metavar="RL_RUN_DIR",
        help="a retro-ray rl-baseline run: its rows and learning curve beside this run's",
    )
    rep.add_argument("--json", action="store_true", help="print report.json to stdout")
    rep.set_defaults(handler=_report)


def _report(args: argparse.Namespace) -> int:
    from retro_ray.report import Prices, build_report

    prices = Prices(
        args.price_prompt,
        args.price_completion,
        args.price_reflector_prompt,
        args.price_reflector_completion,
    )
    report = build_report(args.run_dir, args.out, prices, [Path(b) for b in args.baseline])
    print(json.dumps(report) if args.json else report["index_html"])
    return 0


def _add_data_parsers(sub: argparse._SubParsersAction) -> None:
    from retro_ray.data_fetch import DATASETS

    data = sub.add_parser("data", help="benchmark data sets (HotPotQA, ALFWorld)")
    actions = data.add_subparsers(metavar="ACTION")
    fetch = actions.add_parser(
        "fetch",
        help="download a data set from its official source into the cache the loaders read",
    )
    fetch.add_argument("dataset", choices=DATASETS)
    fetch.add_argument(
        "--dest",
        default=None,
        metavar="DIR",
        help="default, where the loaders look: $RETRO_RAY_CACHE/data/hotpotqa (else "
        "~/.cache/retro_ray/data/hotpotqa); $ALFWORLD_DATA (else ~/.cache/alfworld)",
    )
    fetch.add_argument(
        "--source",
        default=None,
        metavar="URL_OR_PATH",
        help="instead of the official URL: another URL (http, https, file://) or a local path",
    )
    fetch.add_argument("--json", action="store_true", help="print one JSON object")
    fetch.set_defaults(handler=_data_fetch)


def _data_fetch(args: argparse.Namespace) -> int:
    from retro_ray.data_fetch import default_dest, fetch

    result = fetch(args.dataset, dest=args.dest, source=args.source)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(result.path)
    if args.dest is not None and Path(args.dest).expanduser() != default_dest(args.dataset):
        print(
            f"note: {args.dest} is not where the loaders look by default; pass "
            f"--data {result.path} (env.data_path)",
            file=sys.stderr,
        )
    return 0


def _add_zoo_parsers(sub: argparse._SubParsersAction) -> None:
    zoo = sub.add_parser("zoo", help="build or evaluate the embedded tiny models")
    actions = zoo.add_subparsers(metavar="ACTION")
    build = actions.add_parser("build", help="build and cache the tokenizer and tiny models")
    build.add_argument("--recipe", default="default", choices=["default", "tiny"])
    build.add_argument("--cache-dir", default=None, help="default: $RETRO_RAY_CACHE/zoo")
    build.add_argument("--threads", type=int, default=1, help="torch threads (1: see zoo.build)")
    build.add_argument("--json", action="store_true", help="print one JSON object")
    build.set_defaults(handler=_zoo_build)
    ev = actions.add_parser("eval", help="the actor's success with each kind of reflection")
    ev.add_argument("--recipe", default="default", choices=["default", "tiny"])
    ev.add_argument("--cache-dir", default=None)
    ev.add_argument("--tasks", type=int, default=50, help="test tasks per environment")
    ev.add_argument("--trials", type=int, default=3)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--threads", type=int, default=1, help="torch threads")
    ev.add_argument(
        "--out", default=None, help="experience log directory (default: runs/zoo-eval/RECIPE)"
    )
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.set_defaults(handler=_zoo_eval)


def _zoo_build(args: argparse.Namespace) -> int:
    from retro_ray.zoo.build import build_zoo

    built = build_zoo(args.recipe, cache_dir=args.cache_dir, threads=args.threads)
    result = {
        "recipe": args.recipe,
        "path": str(built.root),
        "actor_dir": str(built.actor_dir),
        "retrospective_dir": str(built.retrospective_dir),
        "cache_hit": built.cache_hit,
        "seconds": round(built.seconds, 2),
        "manifest": built.manifest,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"zoo {args.recipe}: {built.root} ({'cache hit' if built.cache_hit else 'built'})")
    return 0


def _zoo_eval(args: argparse.Namespace) -> int:
    from retro_ray.zoo.advice import evaluate_zoo, format_report
    from retro_ray.zoo.build import build_zoo

    if args.tasks < 1 or args.trials < 1:
        raise ValueError("--tasks and --trials must be >= 1")
    built = build_zoo(args.recipe, cache_dir=args.cache_dir, threads=args.threads)
    report = evaluate_zoo(
        built.actor_dir,
        built.retrospective_dir,
        Path(args.out) if args.out else Path("runs") / "zoo-eval" / args.recipe,
        args.tasks,
        args.trials,
        seed=args.seed,
        threads=args.threads,
    )
    report["recipe"] = args.recipe
    print(json.dumps(report) if args.json else format_report(report))
    return 0


def _add_config_args_set_only(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a value of configs/train.yaml by dotted key",
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


def _config_show(args: argparse.Namespace) -> int:
    cfg = load_run_config(args.config, args.set)
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from retro_ray.demo import run_demo

    return run_demo(args.tasks, Path(args.output_dir), seeds=args.seeds, overrides=args.set)


if __name__ == "__main__":
    sys.exit(main())
