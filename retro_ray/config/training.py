"""Sections of the tree for learning: the loss, LoRA, the learner, Retroformer collection and the
rollout pool."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# The loss settings live with the math that reads them; the config tree declares and checks them.
from retro_ray.algo.loss_config import AggMode as AggMode
from retro_ray.algo.loss_config import PolicyLossConfig as PolicyLossConfig
from retro_ray.config.checks import in_range, positive, require


def check_policy_loss(loss: PolicyLossConfig, key: str) -> None:
    """The loss settings' ranges (the class lives with the math, ``retro_ray.algo.loss_config``,
    which imports nothing of the config; the checks that name the key live here)."""
    in_range(loss.clip_eps_low, f"{key}.clip_eps_low", 0.0, 1.0)
    require(loss.clip_eps_high >= 0, f"{key}.clip_eps_high", loss.clip_eps_high, ">= 0")
    positive(loss.rwr_beta, f"{key}.rwr_beta")
    require(loss.kl_coef >= 0, f"{key}.kl_coef", loss.kl_coef, "a number >= 0")
    require(loss.entropy_coef >= 0, f"{key}.entropy_coef", loss.entropy_coef, ">= 0")


@dataclass(frozen=True)
class LoRAConfig:
    rank: int = 8
    """LoRA rank r (the serving engine's ``max_lora_rank`` must be at least this)."""
    alpha: int = 16
    """LoRA scaling numerator: the update is scaled by alpha / rank."""
    dropout: float = 0.0
    """Dropout on the LoRA input (0 keeps sampling and training log-probs identical)."""
    target_modules: tuple[str, ...] = (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    )
    """Llama linear layers that get adapters (all of these are supported by vLLM's LoRA)."""

    def validate(self, key: str) -> None:
        positive(self.rank, f"{key}.rank")
        positive(self.alpha, f"{key}.alpha")
        in_range(self.dropout, f"{key}.dropout", 0.0, 0.9)
        allowed = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
        bad = sorted(set(self.target_modules) - allowed)
        require(
            not bad and bool(self.target_modules),
            f"{key}.target_modules",
            bad or "()",
            "a non-empty subset of " + ", ".join(sorted(allowed)),
        )


@dataclass(frozen=True)
class LearnerConfig:
    """The policy-gradient learner of the retrospective model."""

    lora: LoRAConfig = field(default_factory=LoRAConfig)
    loss: PolicyLossConfig = field(default_factory=PolicyLossConfig)
    advantage_estimator: str = "leave_one_out"
    """Registered group baseline: ``leave_one_out`` or ``group_mean``."""
    normalize_std: bool = False
    """Divide advantages by the group's reward std (plus an epsilon)."""
    lr: float = 2e-3
    """AdamW learning rate of the LoRA weights."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradients are clipped to this global norm."""
    micro_batch_size: int = 32
    """Reflections per forward/backward pass (gradient accumulation over the batch); a
    micro-batch keeps the reflections of one prompt together (``share_prompts``)."""
    share_prompts: bool = True
    """Compute a prompt once for all the reflections after it (a group's ``m``), attending each
    to its cached keys and values: the same log-probs and gradients from far fewer positions
    (``retro_ray.learner.shared_prompts``). False: every row runs its whole prompt. Measured
    (``benchmarks.shared_prompts``): 2.8x faster on the demo's CPU batches, 1.5x on an H200 with
    an 0.9B model and 2k-token prompts; slower (0.6-0.7x) on a GPU with models of 0.1B and below,
    where kernel launches, not compute, bound a step: set it false there."""
    epochs_per_batch: int = 1
    """Optimizer passes over each collected batch; above 1 the PPO ratio clipping matters."""
    num_workers: int = 1
    """Data-parallel Ray Train workers (``retro_ray.learner.distributed``); same update as one."""
    use_gpu: bool = False
    """One GPU per worker, NCCL and bf16 autocast; otherwise gloo on CPU in float32."""
    cpus_per_worker: float = 1.0
    """Logical CPUs each learner worker reserves (fractional on small machines)."""
    torch_threads: int = 0
    """Threads of each CPU worker's torch ops; 0: one per whole CPU reserved (Ray's
    ``OMP_NUM_THREADS``). More than reserved pays when nothing else runs during an update: with
    ``train.overlap`` false the rollouts wait for the learner (``configs/train.yaml``)."""
    max_staleness: int = 1
    """Batches collection may run ahead of the learner: data is at most this many adapter
    versions behind the weights it trains (recorded per batch as ``staleness``)."""
    checkpoint_every: int = 1
    """Batches between checkpoints; a crash replays at most this many onto the restored state."""
    max_failures: int = 3
    """Worker-group restarts (from the last checkpoint) before the learner gives up."""

    def validate(self, key: str) -> None:
        self.lora.validate(f"{key}.lora")
        check_policy_loss(self.loss, f"{key}.loss")
        positive(self.lr, f"{key}.lr")
        positive(self.max_grad_norm, f"{key}.max_grad_norm")
        positive(self.micro_batch_size, f"{key}.micro_batch_size")
        positive(self.epochs_per_batch, f"{key}.epochs_per_batch")
        positive(self.num_workers, f"{key}.num_workers")
        positive(self.cpus_per_worker, f"{key}.cpus_per_worker")
        require(self.torch_threads >= 0, f"{key}.torch_threads", self.torch_threads, ">= 0")
        require(self.max_staleness >= 0, f"{key}.max_staleness", self.max_staleness, ">= 0")
        positive(self.checkpoint_every, f"{key}.checkpoint_every")
        require(self.max_failures >= 0, f"{key}.max_failures", self.max_failures, ">= 0")


@dataclass(frozen=True)
class TrainConfig:
    """Retroformer collection: reflection groups on the train split."""

    group_size: int = 4
    """m: reflections sampled per failed trial; each gets one next trial (its reward)."""
    failed_trials_per_iteration: int = 32
    """Failed trials (groups) collected per learner update."""
    iterations: int = 20
    """Collect-and-update iterations."""
    temperature: float = 1.0
    """Sampling temperature of training reflections (1: the engine's log-probs are the policy's)."""
    top_p: float = 1.0
    """Nucleus mass of training reflections (1: unbiased log-probs)."""
    promote_every: int = 5
    """Iterations between promotion gates (train vs prod on the validation split); the last
    iteration always runs the gate."""
    overlap: bool = False
    """Collect iteration i+1 while the learner trains on iteration i: one step off-policy
    (``ppo_clip``'s importance ratio uses the logged sampler log-probs as the old ones for a
    batch sampled by an older adapter); needs ``learner.max_staleness >= 1`` and
    ``learner.loss.name: ppo_clip``."""

    def validate(self, key: str) -> None:
        require(self.group_size >= 2, f"{key}.group_size", self.group_size, "an integer >= 2")
        positive(self.failed_trials_per_iteration, f"{key}.failed_trials_per_iteration")
        positive(self.iterations, f"{key}.iterations")
        positive(self.promote_every, f"{key}.promote_every")
        in_range(self.temperature, f"{key}.temperature", 1e-3, 10.0)
        in_range(self.top_p, f"{key}.top_p", 1e-6, 1.0)


@dataclass(frozen=True)
class RolloutConfig:
    """Distributed collection: a pool of ``RolloutWorker`` Ray actors (``retro_ray.rollout``)."""

    num_workers: int = 2
    """Rollout worker actors in the pool (each runs many episodes at once on its event loop)."""
    episodes_per_worker: int = 32
    """Episodes in flight per worker; total concurrency is ``num_workers * episodes_per_worker``.
    Episodes wait on the LLM, so this can be far above the worker's CPU share."""
    num_cpus_per_worker: float = 0.25
    """Logical CPUs each worker reserves (fractional: workers mostly wait on HTTP; on 2 cores a
    whole CPU each would starve the Serve replica and the learner, see docs/design.md)."""
    scheduling_strategy: Literal["SPREAD", "DEFAULT"] = "SPREAD"
    """Ray placement of the workers: ``SPREAD`` over the nodes of the cluster, or ``DEFAULT``."""
    max_restarts: int = 3
    """Times Ray restarts a worker that died; its unfinished episodes are retried on the pool."""
    max_episode_attempts: int = 4
    """Attempts of one episode (a worker crash counts); a poison task must not loop forever."""
    max_outage_retries: int = 5
    """Pauses in a row on an endpoint outage (``EndpointError``) before collection gives up."""
    retry_backoff_s: float = 2.0
    """First pause after an endpoint outage; doubled after each further outage, capped below."""
    max_backoff_s: float = 60.0
    """Longest single pause after an endpoint outage."""

    def validate(self, key: str) -> None:
        positive(self.num_workers, f"{key}.num_workers")
        positive(self.episodes_per_worker, f"{key}.episodes_per_worker")
        positive(self.num_cpus_per_worker, f"{key}.num_cpus_per_worker")
        require(self.max_restarts >= 0, f"{key}.max_restarts", self.max_restarts, ">= 0")
        positive(self.max_episode_attempts, f"{key}.max_episode_attempts")
        require(
            self.max_outage_retries >= 0,
            f"{key}.max_outage_retries",
            self.max_outage_retries,
            ">= 0",
        )
        require(self.retry_backoff_s >= 0, f"{key}.retry_backoff_s", self.retry_backoff_s, ">= 0")
        positive(self.max_backoff_s, f"{key}.max_backoff_s")
