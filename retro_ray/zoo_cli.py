"""``retro-ray zoo build|eval``: build and cache the embedded tiny models (``retro_ray.zoo``), and
measure the actor's success with each kind of reflection."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from retro_ray.zoo.recipes import RECIPES, Recipe, get_recipe


def add_zoo_parsers(sub: argparse._SubParsersAction) -> None:
    zoo = sub.add_parser("zoo", help="build or evaluate the embedded tiny models")
    actions = zoo.add_subparsers(metavar="ACTION")
    build = actions.add_parser("build", help="build and cache the tokenizer and tiny models")
    build.add_argument("--recipe", default="default", choices=sorted(RECIPES))
    build.add_argument("--cache-dir", default=None, help="default: $RETRO_RAY_CACHE/zoo")
    build.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: 2 on a machine with 2 or more cores; 1 where other work "
        "runs beside the build: see zoo.build.default_threads)",
    )
    build.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes playing the recipe's games for its data (the same data for any number; "
        "an ALFWorld game takes about 3 s of CPU: give 2 on 2 cores)",
    )
    build.add_argument(
        "--no-release",
        dest="release",
        action="store_false",
        help="build the models here even where the package ships a released build of the recipe "
        "(retro_ray.zoo.release)",
    )
    build.add_argument("--json", action="store_true", help="print one JSON object")
    build.set_defaults(handler=_zoo_build)
    ev = actions.add_parser("eval", help="the actor's success with each kind of reflection")
    ev.add_argument("--recipe", default="default", choices=sorted(RECIPES))
    ev.add_argument("--cache-dir", default=None)
    ev.add_argument("--tasks", type=int, default=50, help="test tasks per environment")
    ev.add_argument("--trials", type=int, default=3)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--threads", type=int, default=1, help="torch threads of the evaluation")
    ev.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="FAMILY.KEY=VALUE",
        help="a difficulty knob of one family (env.options), e.g. household.n_containers=9",
    )
    ev.add_argument(
        "--out", default=None, help="experience log directory (default: runs/zoo-eval/RECIPE)"
    )
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.set_defaults(handler=_zoo_eval)


def _zoo_build(args: argparse.Namespace) -> int:
    from retro_ray.zoo.build import build_zoo

    built = build_zoo(
        args.recipe,
        cache_dir=args.cache_dir,
        threads=args.threads,
        workers=args.workers,
        release=args.release,
    )
    result = {
        "recipe": args.recipe,
        "path": str(built.root),
        "actor_dir": str(built.actor_dir),
        "retrospective_dir": str(built.retrospective_dir),
        "cache_hit": built.cache_hit,
        "released": built.released,
        "seconds": round(built.seconds, 2),
        "manifest": built.manifest,
    }
    if args.json:
        print(json.dumps(result))
    else:
        how = "cache hit" if built.cache_hit else "released" if built.released else "built"
        print(f"zoo {args.recipe}: {built.root} ({how})")
    return 0


def family_options(items: list[str], recipe: Recipe) -> dict[str, dict[str, Any]]:
    """``["household.n_containers=9", ...]`` as ``{"household": {"n_containers": 9}}`` over the
    recipe's fixed ``env_options``, each family's options checked (and typed) by the config loader
    before any model is built or loaded."""
    from retro_ray.zoo.advice import family_config

    options: dict[str, dict[str, Any]] = {e: recipe.fixed_options(e) for e in recipe.envs}
    for item in items:
        name, sep, value = item.partition("=")
        family, dot, key = name.partition(".")
        if not sep or not dot or not key:
            raise ValueError(f"--option {item!r}: expected FAMILY.KEY=VALUE")
        if family not in recipe.envs:
            raise ValueError(
                f"--option {item!r}: family must be one of the recipe's {', '.join(recipe.envs)}"
            )
        options[family][key] = value
    return {  # raises on a bad one
        family: dict(family_config(family, tasks=1, trials=1, seed=0, options=values).env.options)
        for family, values in options.items()
    }


def _zoo_eval(args: argparse.Namespace) -> int:
    from retro_ray.zoo.advice import evaluate_zoo, format_report
    from retro_ray.zoo.build import build_zoo

    if args.tasks < 1 or args.trials < 1:
        raise ValueError("--tasks and --trials must be >= 1")
    recipe = get_recipe(args.recipe)
    options = family_options(args.option, recipe)
    built = build_zoo(recipe, cache_dir=args.cache_dir)  # built with its default threads
    report = evaluate_zoo(
        built.actor_dir,
        built.retrospective_dir,
        Path(args.out) if args.out else Path("runs") / "zoo-eval" / args.recipe,
        args.tasks,
        args.trials,
        seed=args.seed,
        threads=args.threads,
        options=options,
        envs=recipe.envs,
    )
    report["recipe"] = args.recipe
    print(json.dumps(report) if args.json else format_report(report))
    return 0
