"""The configuration tree: loading, overrides, and errors that name the key."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from retro_ray.config import Config, ConfigError, load_config
from retro_ray.run_config import load_run_config

CONFIGS = sorted(Path(__file__).parent.parent.joinpath("configs").glob("*.yaml"))


def test_defaults_validate() -> None:
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg.trials.max_trials == 5 and cfg.trials.memory_size == 3


def test_yaml_and_dotted_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("env:\n  name: lookup\n  num_tasks: 7\ntrials:\n  max_trials: 2\n")
    cfg = load_config(
        path,
        [
            "trials.max_trials=4",
            "actor.endpoint.model=gpt-x",
            "actor.endpoint.temperature=0.5",
            "env.options.n_candidates=3",
        ],
    )
    assert cfg.env.num_tasks == 7 and cfg.trials.max_trials == 4
    assert cfg.actor.endpoint.model == "gpt-x" and cfg.actor.endpoint.temperature == 0.5
    assert cfg.env.options == {"n_candidates": 3}


def test_config_is_frozen() -> None:
    cfg = load_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.trials.max_trials = 9  # type: ignore[misc]


@pytest.mark.parametrize(
    ("override", "names"),
    [
        ("trials.max_trail=3", ["trials.max_trail", "max_trials"]),  # typo: lists allowed keys
        ("trials.max_trials=0", ["trials.max_trials", "0", "> 0"]),
        ("trials.max_trials=three", ["trials.max_trials", "three", "integer"]),
        ("learner.torch_threads=-1", ["learner.torch_threads", "-1", ">= 0"]),
        ("reflector.kind=wise", ["reflector.kind", "wise", "trajectory_oracle"]),
        ("actor.endpoint.base_url=localhost:8000", ["actor.endpoint.base_url", "http://"]),
        ("env.name=atari", ["env.name", "atari", "lookup"]),
        ("env.options.n_candidatez=3", ["env.options.n_candidatez", "n_candidates"]),
        ("env.name=no_such_pkg.mod:Env", ["no_such_pkg.mod", "import"]),
        ("actor.endpoint=3", ["actor.endpoint", "mapping"]),
        ("trials.max_trials", ["key.path=value"]),
    ],
)
def test_errors_name_the_key_the_value_and_what_is_allowed(override: str, names: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        load_run_config(None, [override])
    for fragment in names:
        assert fragment in str(err.value)


def test_malformed_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("env: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_example_configs_load(path: Path) -> None:
    assert CONFIGS, "configs/ holds example configs"
    load_run_config(path)


def test_the_config_checks_its_sections_and_the_run_loader_the_environment() -> None:
    """The config imports nothing above it (the environment registry reads the config): an
    unknown environment passes ``load_config`` and is refused, by key, by ``load_run_config``,
    the loader every command uses. Section errors are refused by both."""
    assert load_config(None, ["env.name=atari"]).env.name == "atari"
    assert load_config(None, ["env.options.n_candidatez=3"]).env.options == {"n_candidatez": 3}
    with pytest.raises(ConfigError, match=r"env\.name: unknown environment 'atari'"):
        load_run_config(None, ["env.name=atari"])
    with pytest.raises(ConfigError, match=r"env\.options\.n_candidatez"):
        load_run_config(None, ["env.options.n_candidatez=3"])
    for load in (load_config, load_run_config):
        with pytest.raises(ConfigError, match=r"trials\.max_trials"):
            load(None, ["trials.max_trials=0"])


def test_loading_a_config_imports_no_environment_and_no_torch() -> None:
    """The config sits low: it reads the loss settings from ``retro_ray.algo.loss_config``
    without loading torch (the algo package loads its torch modules on first use)."""
    code = (
        "import sys; from retro_ray.config import load_config; load_config(None, []); "
        "print(sorted(m for m in sys.modules if m.startswith(('retro_ray.envs', 'torch'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_partial_section_keeps_the_fields_own_defaults() -> None:
    # The reflector's endpoint defaults to model "retrospective"; setting only its URL keeps that.
    cfg = load_config(None, ["reflector.endpoint.base_url=http://127.0.0.1:9/v1"])
    assert cfg.reflector.endpoint.model == "retrospective"
    assert cfg.reflector.endpoint.max_tokens == 64


def test_overlap_needs_a_staleness_of_at_least_one() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, ["train.overlap=true", "learner.max_staleness=0"])
    message = str(err.value)
    for fragment in ["train.overlap", "learner.max_staleness", ">= 1", "learner.max_staleness=1"]:
        assert fragment in message
    cfg = load_config(None, ["train.overlap=true", "learner.max_staleness=1"])
    assert cfg.train.overlap and not load_config().train.overlap


def test_overlap_needs_the_importance_ratio_of_ppo_clip() -> None:
    """Overlap trains one step off-policy: a loss without the ratio would not correct it."""
    from retro_ray.driver.train import check_online

    cfg = load_config(None, ["train.overlap=true", "learner.loss.name=reinforce"])
    with pytest.raises(ConfigError, match=r"learner\.loss\.name.*ppo_clip"):
        check_online(cfg)
    check_online(load_config(None, ["train.overlap=true"]))  # ppo_clip, the default


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("learner.lr=.inf", "learner.lr"),
        ("learner.loss.rwr_max_weight=.nan", "learner.loss.rwr_max_weight"),
        ("learner.loss.clip_eps_high=.inf", "learner.loss.clip_eps_high"),
        ("actor.endpoint.price_per_1m_prompt_tokens=-.inf", "actor.endpoint.price_per_1m_prompt"),
        ("serve.target_ongoing_requests=.nan", "serve.target_ongoing_requests"),
        ("env.options={difficulty: .nan}", "env.options.difficulty"),
    ],
)
def test_nan_and_inf_are_refused_by_name(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match="finite") as err:
        load_config(None, [override])
    assert str(err.value).startswith(key)


def test_nan_in_a_yaml_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "nan.yaml"
    path.write_text("learner:\n  max_grad_norm: .NaN\n")
    with pytest.raises(ConfigError, match=r"learner\.max_grad_norm: bad value nan; expected a fin"):
        load_config(path)


@pytest.mark.parametrize(
    "bad",
    ["a%41", "team=a", ".hidden", "_private", "-dash", "a/b", "a b", "", "naïve", "exp\n"],
)
def test_run_names_are_plain_partition_values(bad: str, tmp_path: Path) -> None:
    """A run name is a directory and a hive partition value (run=<name>): '%41' decodes to 'A',
    '=' splits, a leading dot hides it; matched in full, so a trailing newline fails too."""
    path = tmp_path / "c.yaml"
    path.write_text(f"run:\n  name: {bad!r}\n".replace("'", '"'))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith("run.name: bad value") and "[A-Za-z0-9][A-Za-z0-9_.-]*" in message


@pytest.mark.parametrize("good", ["run", "exp-1", "sweep_3.lr0.01", "A", "run-2026-01-02"])
def test_plain_run_names_load(good: str) -> None:
    assert load_config(None, [f"run.name={good}"]).run.name == good


def test_the_experience_log_refuses_such_run_ids_too(tmp_path: Path) -> None:
    from retro_ray.rollout.experience import ExperienceLog

    for bad in ("a%41", "x=y", ".h", "ok\n"):
        with pytest.raises(ValueError, match="must match"):
            ExperienceLog(tmp_path).partition(bad, 0)


def test_the_zoo_actor_is_played_at_its_recipes_knobs() -> None:
    """A config that plays the zoo's actor at other knobs than its recipe fixed (the families
    actor's named household looks, the ALFWorld actor's 12 steps) is warned, naming the key and
    the fix; the shipped configs play it as trained."""
    from retro_ray.driver.train import zoo_actor_knob_warnings

    configs = Path(__file__).resolve().parents[1] / "configs"
    for name in ("train.yaml", "train_families.yaml", "train_alfworld.yaml"):
        assert zoo_actor_knob_warnings(load_run_config(configs / name)) == []
    families = load_run_config(configs / "train_families.yaml", ["env.options.per_family={}"])
    (warning,) = zoo_actor_knob_warnings(families)
    assert "env.options.per_family.household.named_looks is false" in warning
    assert "set env.options.per_family.household.named_looks=true" in warning
    alfworld = load_run_config(configs / "train_alfworld.yaml", ["env.options.max_steps=20"])
    (warning,) = zoo_actor_knob_warnings(alfworld)
    assert "env.options.max_steps is 20" in warning and "max_steps=12" in warning
