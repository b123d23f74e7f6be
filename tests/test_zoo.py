"""The model zoo: the tiny recipe builds once (session fixture ``zoo_tiny``), is cached, loads with
plain transformers, keeps its special tokens explicit, and learns; the data it trains on is rendered
by the inference prompt code and tokenized exactly as inference tokenizes it."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import re

import pytest

from retro_ray.agents.actors import ScriptedActor
from retro_ray.agents.prompts import ACTION_PROMPT
from retro_ray.agents.reflectors import Reflection, TrajectoryOracleReflector
from retro_ray.agents.results import summarize
from retro_ray.agents.trial_loop import TrialLoop
from retro_ray.envs.registry import make_env
from retro_ray.zoo.build import build_zoo, cache_root
from retro_ray.zoo.data import ReflectionExample, base_examples, generate_data, task_options
from retro_ray.zoo.recipes import TINY, ModelShape, get_recipe

ENVS = ("lookup", "household", "shop")


def test_tiny_build_layout_and_manifest(zoo_tiny) -> None:
    assert zoo_tiny.root.name == f"tiny-{TINY.digest()}"
    for directory in (zoo_tiny.actor_dir, zoo_tiny.retrospective_dir):
        for name in (
            "config.json",
            "generation_config.json",
            "model.safetensors",
            "tokenizer.json",
        ):
            assert (directory / name).is_file(), directory / name
    manifest = json.loads((zoo_tiny.root / "manifest.json").read_text())
    assert manifest["hash"] == TINY.digest() and manifest["recipe"]["name"] == "tiny"
    assert set(manifest["timings_s"]) >= {"data", "tokenizer", "sft_actor", "sft_retrospective"}
    # As the fixture asked (a cache hit with other threads reuses the build).
    assert manifest["threads"] == 1
    assert not list(zoo_tiny.root.parent.glob(".*building*"))  # the staging dir was renamed


def test_second_build_is_a_cache_hit(zoo_tiny) -> None:
    files = {p: p.stat().st_mtime_ns for p in zoo_tiny.root.rglob("*") if p.is_file()}
    again = build_zoo("tiny", cache_dir=zoo_tiny.root.parent, log=lambda _: None, threads=2)
    assert again.cache_hit and again.root == zoo_tiny.root
    assert {p: p.stat().st_mtime_ns for p in zoo_tiny.root.rglob("*") if p.is_file()} == files
    assert again.manifest == zoo_tiny.manifest


def test_bad_thread_count_is_refused_before_any_work(tmp_path) -> None:
    with pytest.raises(ValueError, match="threads: bad value 0"):
        build_zoo("tiny", cache_dir=tmp_path, threads=0)
    assert not list(tmp_path.iterdir())


def test_cli_build_reports_the_cache_hit(zoo_tiny, capsys) -> None:
    from retro_ray.cli import main

    code = main(
        ["zoo", "build", "--recipe", "tiny", "--cache-dir", str(zoo_tiny.root.parent), "--json"]
    )
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["cache_hit"] and result["actor_dir"] == str(zoo_tiny.actor_dir)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("household.n_containers=99", "n_containers must be in 2..24"),
        ("garden.size=3", "family must be one of the recipe's lookup, household, shop"),
        ("household=3", "expected FAMILY.KEY=VALUE"),
    ],
)
def test_zoo_eval_rejects_a_bad_option_before_building(tmp_path, capsys, option, message) -> None:
    from retro_ray.cli import main

    cache = tmp_path / "zoo"
    code = main(["zoo", "eval", "--recipe", "tiny", "--cache-dir", str(cache), "--option", option])
    assert code != 0 and message in capsys.readouterr().err
    assert not cache.exists()  # nothing built, nothing loaded


def test_models_load_with_auto_classes_and_explicit_special_tokens(zoo_tiny) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    expected = (0, 1, 2)  # pad, bos, eos
    assert tuple(zoo_tiny.manifest["special_token_ids"].values()) == expected
    for directory in (zoo_tiny.actor_dir, zoo_tiny.retrospective_dir):
        tokenizer = AutoTokenizer.from_pretrained(directory)
        model = AutoModelForCausalLM.from_pretrained(directory)
        generation = GenerationConfig.from_pretrained(directory)
        for source in (tokenizer, model.config, generation):
            assert (source.pad_token_id, source.bos_token_id, source.eos_token_id) == expected
        assert model.config.head_dim >= 64 and model.config.vocab_size == len(tokenizer)
        ids = tokenizer("Question: where was the boss of Alice born?\n> ", return_tensors="pt")
        out = model.generate(**ids, max_new_tokens=4, do_sample=False)
        assert out.shape[1] == ids["input_ids"].shape[1] + 4 or out[0, -1] == 2


def test_sft_losses_decreased(zoo_tiny) -> None:
    for name in ("actor", "retrospective"):
        report = zoo_tiny.manifest["models"][name]
        assert report["final_loss"] < report["first_loss"] - 0.5, (name, report)


def test_recipe_hash_is_stable_and_changes_with_any_field() -> None:
    assert TINY.digest() == dataclasses.replace(TINY).digest()
    assert len(TINY.digest()) == 12
    assert dataclasses.replace(TINY, tasks_per_env=41).digest() != TINY.digest()
    bigger = dataclasses.replace(TINY, model=ModelShape(hidden_size=128, num_heads=2))
    assert bigger.digest() != TINY.digest()
    assert get_recipe("default").digest() != TINY.digest()
    with pytest.raises(ValueError, match="unknown zoo recipe"):
        get_recipe("huge")


def test_every_recipe_can_be_named_in_a_config() -> None:
    """``serve.zoo_recipe`` and ``rl.zoo_recipe`` accept exactly the zoo's recipes."""
    import typing

    from retro_ray.config.serving import ZooRecipeName
    from retro_ray.run_config import load_run_config
    from retro_ray.zoo.recipes import RECIPES

    assert set(typing.get_args(ZooRecipeName)) == set(RECIPES)
    for name in RECIPES:
        cfg = load_run_config(None, [f"serve.zoo_recipe={name}", f"rl.zoo_recipe={name}"])
        assert (cfg.serve.zoo_recipe, cfg.rl.zoo_recipe) == (name, name)


def test_option_ranges_play_each_task_at_its_drawn_knobs() -> None:
    """Demonstrations are played at knobs drawn per task from the recipe's values (here 5 or 7
    shop items); a recipe without ranges keeps its cache key."""
    assert "option_values" not in TINY.to_dict()
    ranged = dataclasses.replace(
        TINY, envs=("shop",), tasks_per_env=16, option_values=(("shop", (("n_items", (5, 7)),)),)
    ).validate()
    assert ranged.digest() != dataclasses.replace(ranged, option_values=()).digest()
    ids = [f"t{i}" for i in range(16)]
    drawn = task_options(ranged, "shop", ids)
    assert drawn == task_options(ranged, "shop", ids)  # seeded
    assert {d["n_items"] for d in drawn} == {5, 7}
    assert task_options(ranged, "lookup", ids[:2]) == [{}, {}]  # no range: the defaults
    listed = {
        int(n) for s in generate_data(ranged).actor for n in re.findall(r"item (\d+)", s.text)
    }
    assert max(listed) == 7  # seventh items were seen: tasks were played at their drawn knobs
    for bad, message in (
        ((("shop", (("n_items", (99,)),)),), "n_items"),
        ((("shop", (("colour", (2,)),)),), "colour"),
        ((("lookup", (("hops", (1,)),)),), "not one of the recipe's envs"),
    ):
        with pytest.raises(ValueError, match=message):
            dataclasses.replace(ranged, option_values=bad).validate()


def test_base_shares_thin_one_family_and_kind_of_the_base_examples() -> None:
    """``base_shares`` keeps about its share of the named family's kind, every other example, in
    order and the same on every call; a recipe without it keeps all and its cache key."""
    examples = [
        ReflectionExample(f"p{i}", f" t{i}\n", kind, env)
        for i in range(400)
        for env, kind in (("shop", "trajectory_oracle"), ("shop", "vague"), ("lookup", "vague"))
    ]
    assert "base_shares" not in TINY.to_dict()
    assert base_examples(TINY, examples) == examples
    thinned = dataclasses.replace(
        TINY, base_shares=(("shop", (("trajectory_oracle", 0.2),)),)
    ).validate()
    assert thinned.digest() != TINY.digest()
    assert thinned.data_digest() == TINY.data_digest()  # the data and the actor are unchanged
    kept = base_examples(thinned, examples)
    assert kept == base_examples(thinned, examples)
    assert kept == [e for e in examples if e in kept]  # in order
    oracle = sum(e.kind == "trajectory_oracle" for e in kept)
    assert 50 <= oracle <= 110  # about a fifth of 400
    assert len(kept) - oracle == 800  # the other kinds and families whole
    for bad, message in (
        ((("shop", (("trajectory_oracle", 1.5),)),), r"share in \[0, 1\]"),
        ((("shop", (("wise", 0.5),)),), "give a kind of"),
        ((("alfworld", (("vague", 0.5),)),), "not one of the recipe's envs"),
    ):
        with pytest.raises(ValueError, match=message):
            dataclasses.replace(TINY, base_shares=bad).validate()


def test_cache_root_precedence(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("RETRO_RAY_CACHE", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env" / "zoo"
    assert cache_root(tmp_path / "flag") == tmp_path / "flag"
    monkeypatch.delenv("RETRO_RAY_CACHE")
    assert cache_root().parts[-3:] == (".cache", "retro_ray", "zoo")


def test_training_text_tokenizes_exactly_as_inference(zoo_tiny) -> None:
    """Each action's prompt encodes to a prefix of the trial's encoding, so the targets are the
    tokens the model must write after the prompt it will be served."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(zoo_tiny.actor_dir)
    data = generate_data(dataclasses.replace(TINY, tasks_per_env=6))
    assert data.actor and data.reflections
    for sequence in data.actor:
        full = tokenizer(sequence.text)["input_ids"]
        for start, end in sequence.spans:
            prompt = sequence.text[:start]
            assert prompt.endswith(ACTION_PROMPT) and sequence.text[end - 1] == "\n"
            assert full[: len(tokenizer(prompt)["input_ids"])] == tokenizer(prompt)["input_ids"]
    for example in data.reflections:
        assert example.prompt.endswith("Reflection:") and example.target.endswith("\n")
        full = tokenizer(example.prompt + example.target)["input_ids"]
        prompt_ids = tokenizer(example.prompt)["input_ids"]
        assert full[: len(prompt_ids)] == prompt_ids


class MisleadingReflector:
    name = "misleading"

    async def reflect(self, env, trajectory, memory, seed: str) -> Reflection:
        return Reflection(env.misleading_reflection(trajectory, random.Random(seed)))


@pytest.mark.parametrize("env", ENVS)
def test_misleading_reflections_hurt_the_scripted_actor(env: str) -> None:
    def success(reflector) -> float:
        loop = TrialLoop(lambda: make_env(env), ScriptedActor(), reflector, max_trials=3)
        tasks = make_env(env).tasks("train", 60)  # type: ignore[attr-defined]
        return summarize(asyncio.run(loop.run_tasks(tasks, 60)), 3)["success_rate"]

    assert success(MisleadingReflector()) < success(TrajectoryOracleReflector()) - 0.3


def test_zoo_eval_options_are_the_recipes_knobs_typed_with_the_users_on_top() -> None:
    from retro_ray.zoo.recipes import FAMILIES
    from retro_ray.zoo_cli import family_options

    options = family_options(["household.n_containers=8", "shop.n_sizes=5"], FAMILIES)
    assert options == {
        "lookup": {},
        "household": {"named_looks": True, "n_containers": 8},
        "shop": {"n_sizes": 5},
    }


def test_zoo_eval_reports_every_condition(zoo_tiny, tmp_path) -> None:
    from retro_ray.llm.torch_backend import TorchBackend
    from retro_ray.zoo.advice import evaluate_reflections

    actor = TorchBackend(zoo_tiny.actor_dir)
    retro = TorchBackend(zoo_tiny.retrospective_dir)
    report = evaluate_reflections(actor, retro, tmp_path, tasks=2, trials=2, progress=False)
    assert report["tasks"] == 2 and set(report["families"]) == set(ENVS)
    labels = {
        "react",
        "vague",
        "reflexion-greedy",
        "reflexion-sampled",
        "trajectory-oracle",
        "ground-truth-oracle",
    }
    assert set(report["mean"]) == labels
    for env in ENVS:
        family = report["families"][env]
        assert set(family["success"]) == labels
        assert family["best"]["reflexion"] in ("reflexion-greedy", "reflexion-sampled")
        assert all(0.0 <= v <= 1.0 for v in family["success"].values())


@pytest.mark.slow
def test_the_build_checks_its_actor_and_trains_on_when_it_falls_short(tmp_path) -> None:
    """A bar no tiny model reaches: the build checks, trains one more round, checks again,
    starts the actor afresh once and does the same, keeps the attempt closest to able and
    reports the shortfall in its manifest instead of passing silently."""
    from retro_ray.zoo.recipes import AbilityCheck

    recipe = dataclasses.replace(
        TINY,
        name="tiny-check",
        tasks_per_env=12,
        actor_sft=dataclasses.replace(TINY.actor_sft, steps=20),
        retro_sft=dataclasses.replace(TINY.retro_sft, steps=10),
        ability_check=AbilityCheck(
            envs=("lookup",), tasks=4, min_oracle_gain=2.0, extra_steps=5, max_rounds=1
        ),
        actor_restarts=1,
    )
    import torch

    lines: list[str] = []
    callers_threads = torch.get_num_threads()
    threads = 1 if callers_threads > 1 else 2
    built = build_zoo(recipe, cache_dir=tmp_path, log=lines.append, threads=threads)
    assert built.manifest["threads"] == threads
    assert torch.get_num_threads() == callers_threads  # the build gives the caller its own back
    actor = built.manifest["models"]["actor"]
    checks = actor["ability_checks"]
    assert [c["round"] for c in checks] == [0, 1] and not any(c["able"] for c in checks)
    assert [c["trained_steps"] for c in checks] == [5, 0]
    assert actor["steps"] == 25  # the recipe's 20 and one extra round of 5
    assert set(checks[0]["success"]["lookup"]) == {"react", "trajectory-oracle"}
    assert any("falls short" in line for line in lines)
    assert any("WARNING" in line and "still falls short" in line for line in lines)
    attempts = actor["attempts"]
    assert [a["seed"] for a in attempts] == [recipe.seed, recipe.seed + 1000]
    assert not any(a["able"] for a in attempts)
    kept = max(attempts, key=lambda a: a["shortest_gain"])  # the first of equals
    gains = [s["trajectory-oracle"] - s["react"] for s in checks[-1]["success"].values()]
    assert min(gains) == pytest.approx(kept["shortest_gain"], abs=1e-4)
    assert any("starting the actor afresh (seed 1000)" in line for line in lines)


def test_benchmark_envs_and_fixed_options_make_a_recipe() -> None:
    """Any environment with a scripted actor can teach a recipe; ``env_options`` fixes its knobs
    for the data (and the check and ``zoo eval``); the data key ignores the models' fields."""
    from retro_ray.zoo.recipes import ALFWORLD

    assert ALFWORLD.validate().fixed_options("alfworld") == {"max_steps": 12}
    fixed = dataclasses.replace(
        TINY, envs=("shop",), env_options=(("shop", (("n_items", 6),)),)
    ).validate()
    assert "env_options" not in TINY.to_dict()  # recipes without them keep their cache keys
    assert fixed.digest() != dataclasses.replace(fixed, env_options=()).digest()
    assert task_options(fixed, "shop", ["a", "b"]) == [{"n_items": 6}, {"n_items": 6}]
    ranged = dataclasses.replace(fixed, option_values=(("shop", (("n_sizes", (4,)),)),))
    assert task_options(ranged, "shop", ["a"]) == [{"n_items": 6, "n_sizes": 4}]
    retrained = dataclasses.replace(fixed, actor_sft=dataclasses.replace(fixed.actor_sft, steps=9))
    assert retrained.data_digest() == fixed.data_digest() != TINY.data_digest()
    for bad, message in (
        (dataclasses.replace(TINY, envs=("webshop",)), "has no scripted actor"),
        (dataclasses.replace(fixed, env_options=(("lookup", (("hops", 1),)),)), "not one of"),
        (dataclasses.replace(fixed, env_options=(("shop", (("n_items", 99),)),)), "n_items"),
    ):
        with pytest.raises(ValueError, match=message):
            bad.validate()


def test_data_is_the_same_from_any_number_of_processes_and_cached(tmp_path) -> None:
    """Chunks of tasks played in two worker processes give exactly the data of one process; the
    data cache returns it again without playing a game."""
    from retro_ray.zoo.data import cached_data

    recipe = dataclasses.replace(TINY, tasks_per_env=30)
    data, hit = cached_data(recipe, tmp_path, workers=2)
    assert not hit and data == generate_data(recipe, workers=1)
    assert len(data.actor) > 50 and len(data.reflections) > 20
    again, hit = cached_data(recipe, tmp_path, workers=1)
    assert hit and again == data
    assert [p.name for p in tmp_path.iterdir()] == [f"tiny-{recipe.data_digest()}.json"]


def test_slips_stay_context_and_the_scripted_actor_plays_on() -> None:
    """With ``action_slips``, some steps play the scripted action with a number changed; those
    actions are in the text but not among the targets, and the trial goes on after them. Recipes
    without slips keep their cache keys and every action as a target."""
    from retro_ray.zoo.data import slip

    assert slip("look", random.Random(0)) is None
    assert slip("move mug 3 to drawer 8", random.Random(0)) != "move mug 3 to drawer 8"
    assert "action_slips" not in TINY.to_dict() and "numbered_names" not in TINY.to_dict()
    clean = dataclasses.replace(TINY, envs=("household",), tasks_per_env=12).validate()
    slipping = dataclasses.replace(clean, action_slips=0.3).validate()
    assert slipping.data_digest() != clean.data_digest()

    def untargeted_actions(sequence) -> list[tuple[str, str]]:
        targets = {lo for lo, _ in sequence.spans}
        out = []
        for cue in re.finditer(r"\n> ", sequence.text):
            start = cue.end()
            if start not in targets:
                action, after = sequence.text[start:].split("\n", 2)[:2]
                out.append((action, after))
        return out

    assert not any(untargeted_actions(s) for s in generate_data(clean).actor)
    slips = [found for s in generate_data(slipping).actor for found in untargeted_actions(s)]
    assert len(slips) >= 5
    assert all(re.search(r"\d", action) for action, _ in slips)
    assert sum("There is no" in after for _, after in slips) >= 2  # the game's answer, then on
    with pytest.raises(ValueError, match="action_slips"):
        dataclasses.replace(TINY, action_slips=1.0).validate()


def test_numbered_names_are_one_token_and_keep_the_prompt_boundary() -> None:
    """With ``numbered_names``, "safe 2" is one token where BPE merged it, and a prompt still
    encodes to a prefix of its prompt plus action."""
    from retro_ray.zoo.data import piece_split, train_prompt_tokenizer

    text = "> go to drawer 12\nYou see a mug 3, and 2 of them."
    pieces = [p for p, _ in piece_split(True).pre_tokenize_str(text)]
    assert pieces[:4] == ["> ", "go", " to", " drawer 12"] and " mug 3" in pieces
    recipe = dataclasses.replace(TINY, envs=("household",), tasks_per_env=24)
    data = generate_data(recipe)
    tokenizer = train_prompt_tokenizer(data, 1024, numbered_names=True)
    assert len(tokenizer.tokenize(" safe 2")) == 1
    assert len(train_prompt_tokenizer(data, 1024).tokenize(" safe 2")) == 2
    for sequence in data.actor:
        full = tokenizer(sequence.text)["input_ids"]
        for start, _ in sequence.spans:
            prompt_ids = tokenizer(sequence.text[:start])["input_ids"]
            assert full[: len(prompt_ids)] == prompt_ids


def test_recipe_settings_reach_nested_fields_and_name_a_bad_one() -> None:
    from benchmarks.zoo_seeds import with_settings

    recipe = with_settings(TINY, ["actor_sft.steps=90", "max_rounds=2", "tasks_per_env=30"])
    assert recipe.actor_sft.steps == 90 and recipe.ability_check.max_rounds == 2
    assert recipe.tasks_per_env == 30 and recipe.retro_sft == TINY.retro_sft
    with pytest.raises(ValueError, match="SFTSchedule has no field 'stpes'"):
        with_settings(TINY, ["actor_sft.stpes=90"])
    with pytest.raises(ValueError, match="expected FIELD=VALUE"):
        with_settings(TINY, ["tasks_per_env"])


def test_zoo_seeds_builds_each_seed_apart(tmp_path, capsys) -> None:
    """Two seeds of the tiny recipe, each in its own process and cache: two different actors,
    reported with their hashes; a rerun of a seed into the same cache is a hit, not a rebuild."""
    from benchmarks.zoo_seeds import main

    short = ["--set", "actor_sft.steps=20", "--set", "retro_sft.steps=5"]
    args = ["--recipe", "tiny", "--seeds", "0,1", "--cache-dir", str(tmp_path), "--json", *short]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["builds"] == 2 and first["checked"] == 0  # tiny checks no ability
    hashes = [b["actor_sha256"] for b in first["per_build"]]
    assert len(set(hashes)) == 2 and first["identical_actors"] == []
    assert main([*args[:3], "0", *args[4:]]) == 0
    again = json.loads(capsys.readouterr().out)["per_build"][0]
    assert (
        again["actor_sha256"] == hashes[0] and again["seconds"] < first["per_build"][0]["seconds"]
    )
