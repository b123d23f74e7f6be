"""``retro-ray zoo build``: tokenizer, frozen actor and retrospective base, built once and cached.

Layout: ``<cache>/<recipe>-<hash12>/{actor,retrospective}/`` (standard Hugging Face directories
that transformers, peft and vLLM load) plus ``manifest.json`` (recipe, hash, timings, losses). The
hash covers the recipe and the build code's version, so a second call with the same recipe is a
cache hit in well under a second, and a changed recipe never reuses a stale build. A build writes
into a temporary directory next to the final one and renames it into place at the end: an
interrupted build leaves no half-written entry, and of two concurrent builds one wins cleanly.

The games played for a recipe's data are kept too, in ``<cache>/data/`` under a key of the fields
that decide them: a rebuild with another model or schedule, or after an interrupted build, does not
replay them (ALFWorld's games cost about 3 s each to play).

Where the package ships a released build of the recipe (:mod:`retro_ray.zoo.release`: the
``families`` build, 25 minutes here), a cache miss installs that instead, checksums verified.

Cache root: ``--cache-dir``, else ``$RETRO_RAY_CACHE/zoo``, else ``~/.cache/retro_ray/zoo``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retro_ray.zoo.recipes import ZOO_CODE_VERSION, Recipe, get_recipe

if TYPE_CHECKING:  # the data module imports tokenizers and torch: a cache hit needs neither
    from retro_ray.zoo.data import ReflectionExample

MANIFEST = "manifest.json"
DATA_CACHE = "data"
"""Folder of the cache root where the played data is kept (``zoo.data.cached_data``)."""
Log = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """Where zoo builds live (see the module docstring for the precedence)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if env := os.environ.get("RETRO_RAY_CACHE"):
        return Path(env).expanduser() / "zoo"
    return Path.home() / ".cache" / "retro_ray" / "zoo"


@dataclass(frozen=True)
class ZooBuild:
    """A finished build: where its models are and what its manifest says."""

    root: Path
    manifest: dict[str, Any]
    cache_hit: bool
    seconds: float  # of this call (a cache hit costs only the manifest read)
    released: bool = False  # installed from the package's released build (``zoo.release``)

    @property
    def actor_dir(self) -> Path:
        return self.root / "actor"

    @property
    def retrospective_dir(self) -> Path:
        return self.root / "retrospective"


def build_zoo(
    recipe: str | Recipe = "default",
    cache_dir: str | Path | None = None,
    log: Log | None = None,
    threads: int | None = None,
    workers: int = 1,
    release: bool = True,
    releases: Path | None = None,
) -> ZooBuild:
    """Return the cached build of ``recipe``, building it first if missing; where the package
    ships a released build of the recipe (:mod:`retro_ray.zoo.release`; ``releases`` is the
    folder of them), that is installed instead of building, unless ``release`` is false.

    ``threads`` is torch's intra-op thread count, by default :func:`default_threads`. The build's
    weights depend on it in their last bits, as they do on the machine's floating-point kernels
    (the ability check holds what matters); the manifest keeps it, the cache key does not: a
    build made with other threads is a cache hit. ``workers`` processes play the games of the
    recipe's data (the same data for any number; more than one needs the calling script's
    ``if __name__ == "__main__"`` guard, as any spawning code does)."""
    if threads is not None and threads < 1:
        raise ValueError(f"threads: bad value {threads}; give 1 or more (or None: the default)")
    if workers < 1:
        raise ValueError(f"workers: bad value {workers}; give 1 or more")
    threads = threads or default_threads()
    start = time.monotonic()
    log = log or _stderr
    recipe = get_recipe(recipe) if isinstance(recipe, str) else recipe.validate()
    root = cache_root(cache_dir)
    final = root / recipe.key
    if (final / MANIFEST).is_file():
        manifest = json.loads((final / MANIFEST).read_text())
        log(f"[zoo] cache hit: {final}")
        return ZooBuild(final, manifest, True, time.monotonic() - start)
    from retro_ray.zoo.release import RELEASED, install_release, released_build

    shipped = released_build(recipe.key, releases or RELEASED) if release else None
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{recipe.key}.building-"))
    try:
        if shipped:
            log(
                f"[zoo] installing the released build {recipe.key} into {final} (`retro-ray zoo "
                f"build --recipe {recipe.name} --no-release` builds it here instead)"
            )
            install_release(shipped, staging)
        else:
            log(f"[zoo] building {recipe.key} into {final}")
            from retro_ray.zoo.models import torch_threads

            with torch_threads(threads):
                built = _build_into(staging, recipe, log, threads, root / DATA_CACHE, workers)
            (staging / MANIFEST).write_text(json.dumps(built, indent=2))
        manifest = json.loads((staging / MANIFEST).read_text())  # as a cache hit will read it
        try:
            staging.rename(final)
        except OSError:
            if not (final / MANIFEST).is_file():  # not a concurrent build that won: a real error
                raise
            log(f"[zoo] a concurrent build finished first; keeping {final}")
            manifest = json.loads((final / MANIFEST).read_text())
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    seconds = time.monotonic() - start
    log(f"[zoo] {'installed' if shipped else 'built'} {final} in {seconds:.0f}s")
    return ZooBuild(final, manifest, False, seconds, released=shipped is not None)


def default_threads() -> int:
    """Two torch threads where the machine has two cores, else one. Measured on a 2-core machine
    (actor SFT steps of the default recipe, interleaved): 9.4 steps/s with two threads against 6.0
    with one on an otherwise idle machine (8.4 against 5.6 in a later run, the README's figure), 8.2 against 6.3 beside a ``nice``-d busy process (the
    demo's background byte-compiling); but 2.5 against 5.8 beside a busy process of normal
    priority, where OpenMP threads spin-wait for the core the other process holds. A build that
    shares the machine with other work (a Ray cluster collecting, an engine) should pass
    ``threads=1``."""
    return min(2, os.cpu_count() or 1)


def reflection_span(example: ReflectionExample) -> tuple[str, list[tuple[int, int]]]:
    """The reflection example as text with its one target span (the completion)."""
    start = len(example.prompt)
    return example.prompt + example.target, [(start, start + len(example.target))]


def _build_into(
    out: Path, recipe: Recipe, log: Log, threads: int, data_cache: Path, workers: int
) -> dict[str, Any]:
    from retro_ray.zoo.data import base_examples, cached_data, train_prompt_tokenizer
    from retro_ray.zoo.models import init_llama, save_model, special_token_ids
    from retro_ray.zoo.sft import encode_spans, train_sft

    timings: dict[str, float] = {}
    began = time.monotonic()

    def lap(stage: str) -> None:
        nonlocal began
        timings[stage] = round(time.monotonic() - began, 2)
        began = time.monotonic()

    log(
        f"[zoo data] playing {recipe.tasks_per_env} train tasks per env with the scripted actor "
        f"({workers} process{'es' if workers > 1 else ''}; cached in {data_cache})"
    )
    data, data_hit = cached_data(recipe, data_cache, workers, log)
    lap("data")
    if data_hit:
        log("[zoo data] found in the data cache: no game replayed")
    tokenizer = train_prompt_tokenizer(data, recipe.vocab_size, recipe.numbered_names)
    lap("tokenizer")
    log(
        f"[zoo data] {len(data.actor)} actor sequences, {len(data.reflections)} reflections, vocabulary {len(tokenizer)}"
    )

    shape = recipe.model

    def new_model(seed: int) -> Any:
        return init_llama(
            tokenizer,
            hidden_size=shape.hidden_size,
            num_layers=shape.num_layers,
            num_heads=shape.num_heads,
            intermediate_size=shape.intermediate_size,
            max_position_embeddings=shape.max_positions,
            seed=seed,
        )

    stages = (
        ("actor", recipe.actor_sft, [(s.text, s.spans) for s in data.actor]),
        (
            "retrospective",
            recipe.retro_sft,
            [reflection_span(e) for e in base_examples(recipe, data.reflections)],
        ),
    )
    reports: dict[str, Any] = {}
    pad_id = tokenizer.pad_token_id
    for offset, (name, schedule, texts) in enumerate(stages):
        examples = [encode_spans(tokenizer, text, spans) for text, spans in texts]
        kept = [e for e in examples if len(e.input_ids) <= shape.max_positions]
        extra: dict[str, Any] = {}
        if name == "actor":
            model, report, extra = train_able_actor(
                new_model, kept, recipe, tokenizer, out / name, pad_id, log
            )
        else:
            if not recipe.retro_from_actor:
                model = new_model(recipe.seed + offset)
            report = train_sft(model, kept, schedule, pad_id, recipe.seed + offset, name, log)
            save_model(model, tokenizer, out / name)
        reports[name] = {
            "parameters": sum(p.numel() for p in model.parameters()),
            "examples": len(kept),
            "dropped_too_long": len(examples) - len(kept),
            "first_loss": round(report.first_loss, 4),
            "final_loss": round(report.final_loss, 4),
            "steps": report.steps
            + sum(c["trained_steps"] for c in extra.get("ability_checks", [])),
            "seconds": round(report.seconds, 1),
            **extra,
        }
        lap(f"sft_{name}")
    return {
        "recipe": recipe.to_dict(),
        "name": recipe.name,
        "hash": recipe.digest(),
        "code_version": ZOO_CODE_VERSION,
        "threads": threads,
        "special_token_ids": special_token_ids(tokenizer),
        "vocab_size": len(tokenizer),
        "timings_s": timings,
        "total_s": round(sum(timings.values()), 2),
        "models": reports,
        "data": {
            "actor_sequences": len(data.actor),
            "reflections": len(data.reflections),
            "from_cache": data_hit,
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


RESTART_SEED_STRIDE = 1000
"""An actor's fresh start ``k`` initialises from ``recipe.seed + k * RESTART_SEED_STRIDE``."""


def shortest_gain(checks: list[dict[str, Any]]) -> float:
    """The last check's smallest gain of the trajectory oracle over no reflection (the family
    furthest from able); +inf where nothing was checked."""
    if not checks:
        return float("inf")
    return min(s["trajectory-oracle"] - s["react"] for s in checks[-1]["success"].values())


def train_able_actor(
    new_model: Callable[[int], Any],
    examples: list[Any],
    recipe: Recipe,
    tokenizer: Any,
    actor_dir: Path,
    pad_id: int,
    log: Log,
) -> tuple[Any, Any, dict[str, Any]]:
    """Train the actor and check it (:func:`train_until_able`); while an attempt ends short of
    able and ``recipe.actor_restarts`` allow, start again from fresh weights. Keeps the first
    able attempt, else the one closest to able, saved in ``actor_dir``. Returns the model, its
    SFT report and the manifest's extra fields (its ``ability_checks``; ``attempts`` after a
    restart)."""
    import torch

    from retro_ray.zoo.models import save_model
    from retro_ray.zoo.sft import train_sft

    best: tuple[float, int, dict[str, torch.Tensor], Any, list[dict[str, Any]]] | None = None
    attempts: list[dict[str, Any]] = []
    for attempt in range(recipe.actor_restarts + 1):
        seed = recipe.seed + attempt * RESTART_SEED_STRIDE
        label = "actor" if attempt == 0 else f"actor, fresh start {attempt}"
        model = new_model(seed)
        report = train_sft(model, examples, recipe.actor_sft, pad_id, seed, label, log)
        save_model(model, tokenizer, actor_dir)
        checks = (
            train_until_able(model, tokenizer, examples, recipe, actor_dir, pad_id, log)
            if recipe.ability_check.envs
            else []
        )
        able = not checks or checks[-1]["able"]
        gain = shortest_gain(checks)
        attempts.append({"seed": seed, "able": able, "shortest_gain": round(gain, 4)})
        if best is None or gain > best[0]:
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            best = (gain, attempt, state, report, checks)
        if able:
            break
        if attempt < recipe.actor_restarts:
            log(f"[zoo check] starting the actor afresh (seed {seed + RESTART_SEED_STRIDE})")
    assert best is not None
    _, chosen, state, report, checks = best
    if chosen != len(attempts) - 1:
        model.load_state_dict(state)
        save_model(model, tokenizer, actor_dir)
        log(f"[zoo check] keeping attempt {chosen}, the closest to able")
    extra: dict[str, Any] = {"ability_checks": checks} if checks else {}
    if len(attempts) > 1:
        extra["attempts"] = attempts
    return model, report, extra


def check_ability(actor_dir: Path, recipe: Recipe, seed: int) -> dict[str, Any]:
    """Success of no reflection and of the trajectory oracle on validation tasks of each family
    of ``recipe.ability_check`` (the greedy actor through the evaluation path)."""
    import tempfile

    from retro_ray.llm.torch_backend import TorchBackend
    from retro_ray.zoo.advice import evaluate_reflections

    check = recipe.ability_check
    actor = TorchBackend(actor_dir, max_batch_size=64, name="actor")
    with tempfile.TemporaryDirectory(prefix="zoo-check-") as tmp:
        report = evaluate_reflections(
            actor,
            actor,  # no LLM reflector is asked: the agents are react and the oracle
            Path(tmp),
            tasks=check.tasks,
            trials=recipe.max_trials,
            envs=check.envs,
            options={env: recipe.fixed_options(env) for env in check.envs},
            seed=seed,
            agents=("react", "trajectory-oracle"),
            split="validation",
            progress=False,
        )
    return {env: f["success"] for env, f in report["families"].items()}


def train_until_able(
    model: Any,
    tokenizer: Any,
    examples: list[Any],
    recipe: Recipe,
    actor_dir: Path,
    pad_id: int,
    log: Log,
) -> list[dict[str, Any]]:
    """Check the actor (:class:`~retro_ray.zoo.recipes.AbilityCheck`); while it falls short,
    train it on and check again. Returns every check, each with the steps trained after it."""
    from retro_ray.zoo.models import save_model
    from retro_ray.zoo.recipes import SFTSchedule
    from retro_ray.zoo.sft import train_sft

    check = recipe.ability_check
    checks: list[dict[str, Any]] = []
    for round_ in range(check.max_rounds + 1):
        success = check_ability(actor_dir, recipe, recipe.seed + round_)
        gains = {e: s["trajectory-oracle"] - s["react"] for e, s in success.items()}
        able = all(g >= check.min_oracle_gain for g in gains.values())
        summary = ", ".join(
            f"{e}: oracle {s['trajectory-oracle']:.2f} vs none {s['react']:.2f}"
            for e, s in success.items()
        )
        entry = {"round": round_, "success": success, "able": able, "trained_steps": 0}
        checks.append(entry)
        if able:
            log(f"[zoo check] the actor follows advice ({summary})")
            return checks
        if round_ == check.max_rounds:
            log(
                f"[zoo check] WARNING: the actor still falls short of an oracle gain of "
                f"{check.min_oracle_gain} after {check.max_rounds} extra rounds ({summary}); "
                "Retroformer has little room on this build"
            )
            return checks
        log(f"[zoo check] the actor falls short ({summary}): {check.extra_steps} more steps")
        schedule = SFTSchedule(steps=check.extra_steps, lr=check.lr, warmup_steps=10)
        seed = recipe.seed + 100 + round_
        train_sft(model, examples, schedule, pad_id, seed, f"actor+{round_ + 1}", log)
        save_model(model, tokenizer, actor_dir)
        entry["trained_steps"] = check.extra_steps
    return checks
