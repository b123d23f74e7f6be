"""The training loop in one process: the learning proof's executor.

:func:`in_process_loop` gives ``retro_ray.driver.loop.TrainingLoop`` (the loop of ``retro-ray
train``) executors that need no Ray: the rollout worker's episode runner on an event loop of the
driver (``retro_ray.rollout.local.LocalCollector``: the same branching rule at every failed trial
of the main chain, the same Parquet log), a torch backend of the retrospective model serving the
registry's ``train`` adapter (``retro_ray.serve.inprocess.InProcessServing``) and, unless another
is given, the learner's update in this process (``retro_ray.learner.inprocess.InProcessLearner``:
the same ``apply_batch`` and publication to the registry). The promotion gate is left out: a local
run measures its held-out reward itself (``benchmarks/learning_proof.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from retro_ray.config import Config
from retro_ray.driver.loop import Learner, TrainingLoop
from retro_ray.driver.train import train_tasks
from retro_ray.learner.inprocess import InProcessLearner
from retro_ray.learner.policy import ReflectorPolicy
from retro_ray.learner.train_loop import RegistryTarget
from retro_ray.llm.base import LLMClient
from retro_ray.llm.own_loop import OwnLoopBackend
from retro_ray.llm.torch_backend import TorchBackend
from retro_ray.registry import AdapterRegistry
from retro_ray.rollout.experience import ExperienceLog
from retro_ray.rollout.local import LocalCollector
from retro_ray.serve.inprocess import InProcessServing


def registry_target(cfg: Config, run_dir: Path) -> RegistryTarget:
    """Where the run's learner publishes: ``<run_dir>/registry`` (``registry.root`` when set)."""
    root = cfg.registry.root or str(run_dir / "registry")
    return RegistryTarget(root, cfg.registry.name, cfg.registry.max_lora_rank)


def in_process_serving(
    cfg: Config, run_dir: Path, max_batch_size: int = 128, backend: Any = None
) -> InProcessServing:
    """The run's registry (opened for ``run.name``) served by ``backend`` (default: a torch
    backend of the base model; a vLLM one goes in an ``OwnLoopBackend``, see
    :func:`in_process_vllm`)."""
    target = registry_target(cfg, run_dir)
    assert cfg.serve.model_dir is not None, "serve.model_dir: the retrospective base model"
    registry = AdapterRegistry(
        target.root, cfg.serve.model_dir, target.name, target.max_lora_rank, run=cfg.run.name
    )
    if backend is None:
        backend = TorchBackend(cfg.serve.model_dir, max_batch_size=max_batch_size, name="retro")
    return InProcessServing(backend, registry)


def in_process_vllm(cfg: Config) -> OwnLoopBackend:
    """A vLLM engine of the base model for :func:`in_process_serving`, on an event loop of its
    own (the local collector and the hot-swap each bring a new loop); ``close()`` it when done."""
    from retro_ray.llm.vllm_backend import VLLMBackend

    assert cfg.serve.model_dir is not None, "serve.model_dir: the retrospective base model"
    s = cfg.serve
    engine = VLLMBackend(
        s.model_dir,
        name="retro",
        max_lora_rank=cfg.registry.max_lora_rank,
        max_loras=s.max_loras,
        max_model_len=s.max_model_len,
        cpu_threads=s.cpu_threads,
        kv_cache_gib=s.kv_cache_gib,
        dtype=s.dtype,
    )
    return OwnLoopBackend(engine)


def in_process_learner(cfg: Config, run_dir: Path) -> InProcessLearner:
    """A fresh LoRA adapter on the base model, updated in this process, published to the run's
    registry."""
    assert cfg.serve.model_dir is not None, "serve.model_dir: the retrospective base model"
    policy = ReflectorPolicy(cfg.serve.model_dir, cfg.learner, seed=cfg.run.seed)
    return InProcessLearner(policy, cfg.serve.model_dir, registry_target(cfg, run_dir))


def in_process_loop(
    cfg: Config,
    run_dir: Path,
    *,
    actor: LLMClient,
    serving: InProcessServing,
    learner: Learner,
    tokenizer: Any,
) -> TrainingLoop:
    """``retro-ray train``'s loop over in-process collection and serving, and ``learner``
    (:func:`in_process_learner`, or a ``DistributedLearner`` publishing to the same registry)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    collector = LocalCollector(
        cfg,
        cfg.run.name,
        ExperienceLog(run_dir / "experience"),
        actor_client=actor,
        reflector_client=serving.client(),
    )
    return TrainingLoop(
        collector=collector,
        learner=learner,
        serving=serving,
        tokenizer=tokenizer,
        learner_cfg=cfg.learner,
        train_cfg=cfg.train,
        run_id=cfg.run.name,
        run_dir=run_dir,
        tasks=train_tasks(cfg),
    )
