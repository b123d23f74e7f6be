"""The LLM client protocol: every backend (an OpenAI-compatible endpoint, the local torch and vLLM
engines, a scripted test responder) answers ``await client.generate(prompts, sampling)``."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    logprobs: bool = False  # return the log-prob of each sampled token where the backend can
    seed: int | None = None
    adapter: str | None = None  # LoRA adapter name (or alias) for backends that serve adapters


@dataclass
class Completion:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    token_ids: list[int] | None = None  # sampled token ids, from the engine (never re-tokenised)
    prompt_token_ids: list[int] | None = None  # the prompt's ids as the engine saw them
    logprobs: list[float] | None = None  # log pi(token) per sampled token, where available
    finish_reason: str | None = None
    model: str = ""  # the model (and adapter version) that produced it
    latency_s: float = 0.0
    cost: float = 0.0  # at the configured price per token
    adapter_version: int | None = None  # registry version that wrote it, where the server says


@dataclass
class UsageTotals:
    """Running token and cost accounting of one client."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    retries: int = 0
    latencies_s: list[float] = field(default_factory=list)

    def add(self, completion: Completion) -> None:
        self.requests += 1
        self.prompt_tokens += completion.prompt_tokens
        self.completion_tokens += completion.completion_tokens
        self.cost += completion.cost
        self.latencies_s.append(completion.latency_s)


def derive_seed(key: str) -> int:
    """The request seed of a sampled call, from the string that names what it is for (evaluation
    seed, task, trial, sample): the same key always gives the same 31-bit seed, on every machine
    and Python (unlike ``hash``), so a rerun asks every backend for the same samples."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") >> 1


def seeded(sampling: SamplingParams, key: str) -> SamplingParams:
    """``sampling`` with the seed of ``key`` when it samples; greedy requests stay unseeded (a
    seed would change nothing but would keep them from sharing a batch in some engines)."""
    if sampling.temperature <= 0:
        return sampling
    return dataclasses.replace(sampling, seed=derive_seed(key))


ChatMessage = dict[str, str]
"""One turn of a conversation, as OpenAI's chat API takes it: ``{"role": "system" | "user" |
"assistant", "content": text}``."""


@runtime_checkable
class ChatClient(Protocol):
    """A client that takes whole conversations (turns with roles) rather than flat prompts: an
    OpenAI-compatible chat endpoint, where the server applies the model's chat template."""

    async def chat(
        self, conversations: Sequence[Sequence[ChatMessage]], sampling: SamplingParams
    ) -> list[Completion]:
        """One assistant reply per conversation, in order."""
        ...


@runtime_checkable
class LLMClient(Protocol):
    async def generate(self, prompts: Sequence[str], sampling: SamplingParams) -> list[Completion]:
        """One completion per prompt, in order."""
        ...


class PinnedAdapter:
    """One adapter of a multi-adapter backend as a client of its own: every request runs on
    ``adapter`` (``None``: the base model), whatever the caller's sampling names."""

    def __init__(self, inner: LLMClient, adapter: str | None) -> None:
        self.inner, self.adapter = inner, adapter

    async def generate(self, prompts: Sequence[str], sampling: SamplingParams) -> list[Completion]:
        pinned = dataclasses.replace(sampling, adapter=self.adapter)
        return await self.inner.generate(prompts, pinned)

    async def chat(
        self, conversations: Sequence[Sequence[ChatMessage]], sampling: SamplingParams
    ) -> list[Completion]:
        if not isinstance(self.inner, ChatClient):
            raise TypeError(f"{type(self.inner).__name__} takes no conversations (no chat)")
        pinned = dataclasses.replace(sampling, adapter=self.adapter)
        return await self.inner.chat(conversations, pinned)


class EndpointError(RuntimeError):
    """An LLM endpoint stayed unreachable or kept failing after all retries. Never counted as a
    failed episode: the run stops, keeping what it finished, and names the endpoint.

    ``status`` is the last HTTP status (None: no answer) and ``kind`` the error's type, so callers
    can sort failures without parsing the message (which never carries a provider's raw body)."""

    def __init__(self, message: str, *, status: int | None = None, kind: str | None = None):
        super().__init__(message)
        self.status, self.kind = status, kind


class RequestRejected(Exception):
    """The endpoint answered, and refused this one request for what it holds (HTTP 400, 413, 422:
    a prompt past the context window, text it cannot take). Deterministic, so neither a retry nor
    a pause helps, and the endpoint is healthy: unlike ``EndpointError`` this is not an outage.
    The trial loop records the episode as failed with this reason and the run goes on."""

    def __init__(self, message: str, *, status: int | None = None, kind: str | None = None):
        super().__init__(message)
        self.status, self.kind = status, kind
