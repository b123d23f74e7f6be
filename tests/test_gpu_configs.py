"""The GPU configs (``configs/gpu_*.yaml``) checked on CPU as far as they can be (issue 18 item 6):
every key is a field the tree reads and holds the file's value, the environment resolves, the
Serve deployment, the vLLM engine and the Ray Train learner get the GPU options the file implies,
and (slow) ``retro-ray train`` runs the file on CPU with a tiny Qwen2-architecture model in place of
the real one, a loopback chat endpoint in place of the cloud actor and one short iteration.

What this cannot run here (no GPU): vLLM on CUDA, NCCL between learner workers, bf16 autocast.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from retro_ray.config import Config, load_config
from tests.support.ports import free_port
from tests.support.shared_data import HOTPOTQA

HOTPOTQA_FILE = HOTPOTQA / "ircot_dev_subsample.jsonl"  # hash splits: train tasks for few-shot

REPO = Path(__file__).resolve().parent.parent
GPU_CONFIGS = sorted((REPO / "configs").glob("gpu_*.yaml"))
TINY_ARCH = "qwen2"  # the architecture of the configs' suggested Qwen2.5 instruct model


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and dotted != "env.options":
            out.update(_flatten(value, f"{dotted}."))
        else:
            out[dotted] = value
    return out


def _field(cfg: Config, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = node[part] if isinstance(node, dict) else getattr(node, part)
    return node


def cpu_overrides(model_dir: Path) -> list[str]:
    """What swaps a GPU config onto this CPU machine: the tiny model, no GPUs, and a context
    window the tiny model has (its positions end at 2048; the config asks for 4096)."""
    return [
        f"serve.model_dir={model_dir}",
        "serve.replica_gpus=0",
        "serve.max_model_len=1024",
        "learner.use_gpu=false",
        f"env.data_path={HOTPOTQA_FILE}",
    ]


def test_there_are_gpu_configs() -> None:
    assert GPU_CONFIGS, "configs/gpu_*.yaml: none found"


@pytest.mark.parametrize("path", GPU_CONFIGS, ids=lambda p: p.name)
def test_every_key_is_a_field_holding_the_files_value(path: Path) -> None:
    from retro_ray.run_config import load_run_config

    raw = yaml.safe_load(path.read_text())
    cfg = load_config(path)
    for dotted, value in _flatten(raw).items():
        got = _field(cfg, dotted)
        if isinstance(got, tuple):
            got = list(got)
        assert got == value, f"{path.name}: {dotted} is {got!r}, the file says {value!r}"

    # Every field of the tree resolves to a value (defaults for what the file leaves out).
    def walk(node: Any, key: str) -> None:
        for f in dataclasses.fields(node):
            value = getattr(node, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{key}.{f.name}")

    walk(cfg, "cfg")
    assert cfg.registry_dir == Path(cfg.run.output_dir) / cfg.run.name / "registry"
    # The environment resolves (with the data file the tests have; users fetch theirs).
    checked = load_run_config(path, [f"env.data_path={HOTPOTQA_FILE}"])
    assert checked.env.name == cfg.env.name


@pytest.mark.parametrize("name", [p.name for p in GPU_CONFIGS] + ["chat_actor.yaml"])
def test_train_uses_the_actor_endpoint_the_config_names(name: str, monkeypatch) -> None:
    """``retro-ray train`` fills in the zoo's tiny actor only where the config names no actor
    (before, every endpoint actor without a model_dir was replaced by it, after a zoo build)."""
    import retro_ray.zoo.build
    from retro_ray.driver.train import resolve_models, uses_zoo_actor

    def no_zoo(*args: object, **kwargs: object) -> None:
        raise AssertionError("the zoo was built for a config that names its models")

    monkeypatch.setattr(retro_ray.zoo.build, "build_zoo", no_zoo)
    cfg = load_config(REPO / "configs" / name, ["serve.model_dir=/models/any"])
    assert not uses_zoo_actor(cfg.actor)
    assert resolve_models(cfg) is cfg
    assert uses_zoo_actor(load_config(REPO / "configs" / "train_tiny.yaml").actor)


@pytest.fixture(scope="module")
def qwen2_config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory with only a Qwen2 ``config.json``: all that building the options reads
    (the weights are loaded by engines and learners, which the slow test starts)."""
    from transformers import Qwen2Config

    out = tmp_path_factory.mktemp("qwen2_config")
    Qwen2Config(max_position_embeddings=32768).save_pretrained(out)  # Qwen2.5's context
    return out


@pytest.fixture(scope="module")
def tiny_chat_model(tiny_architectures: dict[str, Path]) -> Path:
    """The tiny random-weight model of the configs' architecture (the session's, shared with
    the architecture matrix)."""
    return tiny_architectures[TINY_ARCH]


@pytest.mark.parametrize("path", GPU_CONFIGS, ids=lambda p: p.name)
def test_the_serve_engine_and_learner_options_it_implies(path: Path, qwen2_config_dir) -> None:
    from retro_ray.agents.actors import ChatActor
    from retro_ray.agents.build import build_actor
    from retro_ray.envs.registry import make_env_from_config
    from retro_ray.learner.distributed import scaling_options
    from retro_ray.llm.vllm_backend import engine_args
    from retro_ray.serve.launch import deployment_options, replica_settings

    cfg = load_config(
        path, [f"serve.model_dir={qwen2_config_dir}", f"env.data_path={HOTPOTQA_FILE}"]
    )
    s = cfg.serve
    options = deployment_options(s)
    actor_options = options["ray_actor_options"]
    assert actor_options["num_gpus"] == s.replica_gpus > 0
    assert actor_options["num_cpus"] == s.replica_cpus
    assert options.get("num_replicas") == s.num_replicas or "autoscaling_config" in options

    settings = replica_settings(cfg, qwen2_config_dir)
    assert settings.backend == s.backend == "vllm"
    assert settings.gpu_memory_utilization == s.gpu_memory_utilization
    assert settings.max_model_len == s.max_model_len == settings.max_context
    gpu_args = engine_args(
        settings.model_dir,
        on_gpu=True,
        dtype=settings.dtype,
        max_model_len=settings.max_model_len,
        max_lora_rank=settings.max_lora_rank,
        max_loras=settings.max_loras,
        gpu_memory_utilization=settings.gpu_memory_utilization,
    )
    assert gpu_args["gpu_memory_utilization"] == s.gpu_memory_utilization
    assert gpu_args["dtype"] == (s.dtype or "auto") and gpu_args["enable_lora"]
    assert gpu_args["max_lora_rank"] == cfg.registry.max_lora_rank >= cfg.learner.lora.rank
    assert "enable_chunked_prefill" not in gpu_args  # the CPU-only scheduler workaround

    scaling = scaling_options(cfg.learner)
    assert scaling == {
        "num_workers": cfg.learner.num_workers,
        "use_gpu": True,
        "resources_per_worker": {"CPU": cfg.learner.cpus_per_worker, "GPU": 1},
        "backend": "nccl",
    }
    from ray.train import ScalingConfig

    assert ScalingConfig(**{k: v for k, v in scaling.items() if k != "backend"}).num_workers == (
        cfg.learner.num_workers
    )

    env = make_env_from_config(cfg.env)
    actor = build_actor(cfg.actor, env)
    assert isinstance(actor, ChatActor) and actor.few_shot is not None
    assert actor.few_shot.steps  # the expert demonstration, sent as turns


@pytest.mark.parametrize("path", GPU_CONFIGS, ids=lambda p: p.name)
def test_vllm_accepts_the_engine_arguments(path: Path, qwen2_config_dir) -> None:
    from tests.support.extras import require_vllm

    require_vllm()
    from vllm.engine.arg_utils import AsyncEngineArgs

    from retro_ray.llm.vllm_backend import engine_args

    cfg = load_config(path)
    s = cfg.serve
    args = AsyncEngineArgs(
        **engine_args(
            str(qwen2_config_dir),
            on_gpu=True,
            dtype=s.dtype,
            max_model_len=s.max_model_len,
            max_lora_rank=cfg.registry.max_lora_rank,
            max_loras=s.max_loras,
            gpu_memory_utilization=s.gpu_memory_utilization,
        )
    )
    assert args.gpu_memory_utilization == s.gpu_memory_utilization and args.enable_lora


def yes_then_no(prompt: str) -> str:
    """A scripted chat actor for HotPotQA: answers yes, and no once a note is in its turns
    (comparison questions are won either way, so groups differ in reward now and then)."""
    return "Finish[no]" if "Notes from earlier trials" in prompt else "Finish[yes]"


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("path", GPU_CONFIGS, ids=lambda p: p.name)
def test_train_runs_the_config_on_cpu_with_a_tiny_model(
    path: Path, tiny_chat_model: Path, tmp_path: Path
) -> None:
    from tests.support.extras import require_vllm
    from tests.support.openai_server import OpenAIServer

    require_vllm()
    with OpenAIServer(yes_then_no, models=("gpt-4o-mini",)) as actor:
        overrides = [
            *cpu_overrides(tiny_chat_model),
            f"actor.endpoint.base_url={actor.base_url}",
            f"serve.port={free_port()}",
            "serve.replica_cpus=0.5",
            "learner.cpus_per_worker=0.25",
            "rollout.num_workers=1",
            "rollout.episodes_per_worker=4",
            "rollout.num_cpus_per_worker=0.25",
            "train.iterations=1",
            "train.failed_trials_per_iteration=2",
            "trials.max_trials=2",
            "reflector.endpoint.max_tokens=24",
            "registry.gate_tasks=4",
            f"run.output_dir={tmp_path / 'runs'}",
        ]
        summary_path = tmp_path / "summary.json"
        env = {
            **os.environ,
            "OPENAI_API_KEY": "sk-loopback-test",
            "RETRO_RAY_CACHE": str(tmp_path / "cache"),
            "OMP_NUM_THREADS": "1",
        }
        env.pop("RAY_ADDRESS", None)
        cmd = [sys.executable, "-m", "retro_ray.cli", "train", "--config", str(path)]
        cmd += [arg for o in overrides for arg in ("--set", o)]
        cmd += ["--json", str(summary_path)]
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
        assert done.returncode == 0, done.stderr[-3000:]

    summary = json.loads(summary_path.read_text())
    run_dir = Path(summary["run_dir"])
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert summary["iterations"] == 1 and summary["overlap"] is True
    assert [m["iteration"] for m in metrics] == [0]
    assert metrics[0]["groups"] > 0 and summary["train_version"] >= 1  # learned and published
    assert metrics[0]["learner_world_size"] == 2  # the config's two data-parallel workers
    assert metrics[0]["version"] == 1 and "swap_s" in metrics[0]  # hot-swapped into serving
    gates = [json.loads(line) for line in (run_dir / "gates.jsonl").read_text().splitlines()]
    assert gates and gates[-1]["candidate_tasks"] == 4  # the gate decided on validation tasks
    # The actor was the chat actor: every request a conversation with the example as turns.
    conversations = actor.conversations()
    assert conversations and len(conversations) == len(actor.requests)
    assert all(
        c[0]["role"] == "system" and c[1]["content"].startswith("Example:") for c in conversations
    )
