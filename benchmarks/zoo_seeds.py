"""Does a zoo recipe build an able actor whatever the seed and the thread count?

Builds one recipe once per (seed, torch threads) pair, each build in its own process and its own
empty cache, several at a time, and reports per build the trail of its ability check (no
reflection against the trajectory oracle on validation tasks, after the recipe's schedule and
after each extra round, of the attempt the build kept), its fresh starts (``attempts``), whether
it ended able, and a hash of the actor's weights (equal hashes:
bit-identical actors). The zoo's promise is that abilities do not depend on the machine; a
machine's floating-point kernels are one perturbation of a build, a seed a larger one, and
another machine's CPU the real one (run it there).

    python -m benchmarks.zoo_seeds --seeds 0,1,2,3 --json               # the default recipe
    python -m benchmarks.zoo_seeds --seeds 0 --threads 1,2 --json      # kernels: same weights?
    python -m benchmarks.zoo_seeds --seeds 0,1 --set actor_sft.steps=2000 --set max_rounds=0

``--set FIELD=VALUE`` changes a recipe field (``tasks_per_env``, ``actor_sft.steps``,
``model.num_layers``...; ``max_rounds`` is the ability check's) for every build. Each build
uses its given threads, so run at most cores / threads builds at once (``--processes``).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from retro_ray.zoo.recipes import Recipe, get_recipe


def with_settings(recipe: Recipe, settings: list[str]) -> Recipe:
    """``recipe`` with each ``FIELD=VALUE`` applied (dotted for a nested dataclass; the value
    parsed as JSON, else kept as a string); ``max_rounds`` sets the ability check's."""
    for setting in settings:
        key, sep, raw = setting.partition("=")
        if not sep:
            raise ValueError(f"--set {setting!r}: expected FIELD=VALUE")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        path = ["ability_check", "max_rounds"] if key == "max_rounds" else key.split(".")
        recipe = _replace_path(recipe, path, value, key)
    return recipe.validate()


def _replace_path(obj: Any, path: list[str], value: Any, key: str) -> Any:
    names = {f.name for f in dataclasses.fields(obj)}
    if path[0] not in names:
        raise ValueError(f"--set {key}: {type(obj).__name__} has no field {path[0]!r}")
    if len(path) > 1:
        value = _replace_path(getattr(obj, path[0]), path[1:], value, key)
    return dataclasses.replace(obj, **{path[0]: value})


def build_one(recipe: Recipe, seed: int, threads: int, cache_root: str) -> dict[str, Any]:
    """Build ``recipe`` at ``seed`` with ``threads`` into an empty cache; what its check found."""
    from retro_ray.zoo.build import build_zoo

    began = time.monotonic()
    lines: list[str] = []
    built = build_zoo(
        dataclasses.replace(recipe, seed=seed),
        cache_dir=Path(cache_root) / f"seed{seed}-threads{threads}",
        threads=threads,
        log=lines.append,
        release=False,  # a build made here, even where the package ships this recipe's
    )
    actor = built.manifest["models"]["actor"]
    checks = actor.get("ability_checks", [])
    trail = [
        {
            "steps": recipe.actor_sft.steps + sum(c["trained_steps"] for c in checks[:i]),
            "success": c["success"],
        }
        for i, c in enumerate(checks)
    ]
    weights = hashlib.sha256((built.actor_dir / "model.safetensors").read_bytes()).hexdigest()
    return {
        "seed": seed,
        "threads": threads,
        "seconds": round(time.monotonic() - began, 1),
        "actor_steps": actor["steps"],
        "final_loss": actor["final_loss"],
        "checks": trail,
        "able": checks[-1]["able"] if checks else None,
        "attempts": actor.get("attempts", []),
        "actor_sha256": weights[:16],
    }


def summarise(builds: list[dict[str, Any]]) -> dict[str, Any]:
    checked = [b for b in builds if b["able"] is not None]
    by_hash: dict[str, list[str]] = {}
    for b in builds:
        by_hash.setdefault(b["actor_sha256"], []).append(f"seed {b['seed']} threads {b['threads']}")
    return {
        "builds": len(builds),
        "able": sum(bool(b["able"]) for b in checked),
        "checked": len(checked),
        "identical_actors": [names for names in by_hash.values() if len(names) > 1],
    }


def report_line(b: dict[str, Any]) -> str:
    last = b["checks"][-1]["success"] if b["checks"] else {}
    gains = ", ".join(
        f"{env} none {s['react']:.2f} oracle {s['trajectory-oracle']:.2f}"
        for env, s in last.items()
    )
    state = {True: "able", False: "NOT able", None: "unchecked"}[b["able"]]
    restarts = len(b["attempts"]) - 1
    fresh = f" of fresh start {restarts}" if restarts > 0 else ""
    return (
        f"seed {b['seed']} threads {b['threads']}: {state} after {b['actor_steps']} steps{fresh}"
        f"{' (' + gains + ')' if gains else ''}, {b['seconds']:.0f} s, actor {b['actor_sha256']}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="default")
    p.add_argument("--seeds", default="0,1", help="comma-separated recipe seeds")
    p.add_argument("--threads", default="1", help="comma-separated torch thread counts")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    p.add_argument("--processes", type=int, default=None, help="builds at once (default: all)")
    p.add_argument("--cache-dir", default=None, help="where the builds go (default: a temp dir)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = p.parse_args(argv)

    recipe = with_settings(get_recipe(args.recipe), args.set)  # bad settings fail before work
    jobs = [(int(s), int(t)) for s in args.seeds.split(",") for t in args.threads.split(",")]
    most_threads = max(t for _, t in jobs)
    processes = args.processes or min(len(jobs), max(1, (os.cpu_count() or 1) // most_threads))
    began = time.monotonic()
    builds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="zoo-seeds-") as tmp:
        root = args.cache_dir or tmp
        with ProcessPoolExecutor(processes, multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(build_one, recipe, s, t, root) for s, t in jobs]
            for done in as_completed(futures):
                builds.append(done.result())
                print(report_line(builds[-1]), file=sys.stderr, flush=True)
    builds.sort(key=lambda b: (b["seed"], b["threads"]))
    result = {
        "recipe": args.recipe,
        "settings": args.set,
        "seconds": round(time.monotonic() - began, 1),
        "cpus": os.cpu_count(),
        **summarise(builds),
        "per_build": builds,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['able']} of {result['checked']} checked builds able")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
