"""Sections of the tree that the trial loop reads: endpoints, environment, actor, reflector,
trials, run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from retro_ray.config.checks import check_name, in_range, positive, require
from retro_ray.registry import PROD_ALIAS

SERVE_TOKEN_ENV = "RETRO_RAY_SERVE_TOKEN"
"""The variable holding the bearer token of our Serve app (``serve.api_key_env``'s default): the
reflector's endpoint reads its key from it by default, so a reflector pointed at the local Serve
app sends that app's token, never a cloud key such as ``OPENAI_API_KEY``."""


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
    """Which API to call: ``completions`` (raw prompt) or ``chat`` (``/chat/completions``: the actor
    sends its scratchpad as system / user / assistant turns, other callers their prompt as one user
    message; the server applies the model's chat template)."""
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
    http_transport: Literal["direct", "aiohttp", "httpx"] = "direct"
    """How requests travel: ``direct`` (the OpenAI wire protocol on a plain aiohttp session, the
    least CPU per call), or the official SDK on its ``aiohttp`` (``DefaultAioHttpClient``) or
    ``httpx`` (its default) client: the same bodies, retries and errors either way, measured side
    by side in ``benchmarks.rollout``. Each keeps up to ``max_concurrency`` connections alive."""
    price_per_1m_prompt_tokens: float = 0.0
    """Price of one million prompt tokens, for cost accounting (any currency)."""
    price_per_1m_completion_tokens: float = 0.0
    """Price of one million completion tokens, for cost accounting."""

    def validate(self, key: str) -> None:
        require(
            self.base_url.startswith(("http://", "https://")),
            f"{key}.base_url",
            self.base_url,
            "an http:// or https:// URL",
        )
        positive(self.max_tokens, f"{key}.max_tokens")
        in_range(self.temperature, f"{key}.temperature", 0.0, 10.0)
        in_range(self.top_p, f"{key}.top_p", 1e-6, 1.0)
        positive(self.timeout_s, f"{key}.timeout_s")
        require(self.max_retries >= 0, f"{key}.max_retries", self.max_retries, "an integer >= 0")
        require(self.backoff_s >= 0, f"{key}.backoff_s", self.backoff_s, "a number >= 0")
        positive(self.max_concurrency, f"{key}.max_concurrency")


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
        positive(self.num_tasks, f"{key}.num_tasks")


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
    sampling settings still come from ``endpoint``; it takes the text prompt (``endpoint.api`` is
    not used)."""
    instruction: str = (
        "Solve the task. Answer with one action per line, as `> Action[argument]` "
        "or the command the task describes."
    )
    """The first line of every actor prompt."""
    few_shot: bool = False
    """Prepend one expert demonstration per environment (for real LLMs; tiny models have no room);
    with ``endpoint.api: chat`` it goes as the turns it was played in."""
    scratchpad_max_chars: int = 1600
    """The trajectory so far is cut to this many characters (oldest steps dropped) in the prompt."""

    def validate(self, key: str) -> None:
        self.endpoint.validate(f"{key}.endpoint")
        positive(self.scratchpad_max_chars, f"{key}.scratchpad_max_chars")


@dataclass(frozen=True)
class ReflectorConfig:
    """Who writes the reflection after a failed trial."""

    kind: Literal["llm", "trajectory_oracle", "ground_truth_oracle", "vague", "none"] = "llm"
    """``llm``: the retrospective model at ``endpoint`` (Reflexion: a frozen model; Retroformer: the
    trained adapter). ``trajectory_oracle``: the best reflection code can derive from the failed
    trial. ``ground_truth_oracle``: written from the hidden solution (an upper bound only).
    ``vague``: true but useless advice. ``none``: no reflections (ReAct)."""
    endpoint: EndpointConfig = field(
        default_factory=lambda: EndpointConfig(
            model="retrospective", max_tokens=64, api_key_env=SERVE_TOKEN_ENV
        )
    )
    """Where the retrospective model is served (``--agent reflexion`` asks for ``endpoint.model``:
    a frozen model, which may be the actor itself). Its key variable defaults to the Serve app's
    token (``RETRO_RAY_SERVE_TOKEN``); name a cloud key here only for a cloud reflector."""
    trained_model: str = PROD_ALIAS
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
    prompt_format: Literal["auto", "chat", "completion"] = "auto"
    """The retrospective model's language. ``chat``: the reflection prompt goes as a system and a
    user turn through the model's chat template (``/v1/chat/completions`` at the endpoint) and
    the reply ends at the model's end-of-turn token. ``completion``: plain text ending in
    ``Reflection:``, one line. ``auto``: ``chat`` when the retrospective model's tokenizer
    (``serve.model_dir``, or the local engine's) has a chat template, else ``completion``."""

    def validate(self, key: str) -> None:
        self.endpoint.validate(f"{key}.endpoint")
        positive(self.trajectory_max_chars, f"{key}.trajectory_max_chars")
        positive(self.max_chars, f"{key}.max_chars")


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
        positive(self.max_trials, f"{key}.max_trials")
        require(self.memory_size >= 0, f"{key}.memory_size", self.memory_size, "an integer >= 0")
        if self.max_steps is not None:
            positive(self.max_steps, f"{key}.max_steps")
        positive(self.concurrency, f"{key}.concurrency")


@dataclass(frozen=True)
class RunConfig:
    name: str = "run"
    """Name of the run; its outputs go to ``output_dir/name``."""
    output_dir: str = "runs"
    """Directory under which each run writes its results."""
    seed: int = 0
    """Seed of every random choice the run makes (sampling, scripted policies, vague reflections)."""

    def validate(self, key: str) -> None:
        check_name(self.name, f"{key}.name")
