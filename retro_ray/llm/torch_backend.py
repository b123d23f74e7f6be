"""A local transformers model as an ``LLMClient``: the reference implementation the vLLM backend is
tested against, and the fallback where vLLM is not installed.

Concurrent ``generate`` calls with equal sampling parameters (the seed aside: every row draws from
its own seeded generator) are merged into one left-padded batch (up to ``max_batch_size`` prompts): rollout workers run many episodes at once, each asking for one
completion, and a batch of 64 costs little more than a batch of 1 on a small model. The blocking
torch work runs in a thread (``asyncio.to_thread``) so the event loop keeps serving episodes.

Log-probs are RAW: ``log_softmax`` of the unscaled logits, whatever the temperature or top_p, which
is what vLLM v1 returns by default; at temperature 1 and top_p 1 they are the sampling log-probs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from retro_ray.algo.logprobs import token_logprobs
from retro_ray.llm.base import ChatMessage, Completion, SamplingParams
from retro_ray.llm.lora import AdapterSet
from retro_ray.llm.templates import Prompt, chat_prompt_ids, encode_prompt, pad_id, stop_token_ids
from retro_ray.llm.torch_decode import Decoder


@dataclass
class _Pending:
    prompts: list[Prompt]
    seed: int | None  # each request keeps its own seed inside a merged batch
    future: asyncio.Future[list[Completion]]
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class _Queue:
    requests: list[_Pending] = field(default_factory=list)


class TorchBackend:
    """Generate and score with a Hugging Face causal LM directory plus named LoRA adapters.

    ``sampling.adapter=None`` runs the base model with every adapter disabled (the KL reference);
    a name runs that adapter. Greedy when ``temperature == 0``; seeded sampling is reproducible per
    prompt, whatever else shares its batch."""

    def __init__(
        self,
        model_dir: str | Path,
        adapters: dict[str, str | Path] | None = None,
        dtype: torch.dtype = torch.float32,
        device: str = "cpu",
        max_batch_size: int = 64,
        name: str | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.name = name or self.model_dir.name
        self.device = torch.device(device)
        self.max_batch_size = max_batch_size
        self.tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(self.model_dir)
        self.tokenizer.padding_side = "left"
        model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=dtype).to(self.device)
        model.eval()
        self.max_positions: int = model.config.max_position_embeddings
        # Every token that ends a reply (a chat model's end-of-turn, Llama 3's two eos ids).
        self.eos_token_ids = stop_token_ids(self.model_dir, self.tokenizer)
        self.eos_token_id: int = (
            self.tokenizer.eos_token_id
            if self.tokenizer.eos_token_id is not None
            else min(self.eos_token_ids)
        )
        self._adapters = AdapterSet(model, self.device)
        for adapter_name, path in (adapters or {}).items():
            self._adapters.load(adapter_name, path)
        self._lock = threading.Lock()  # one batch at a time: adapter selection is model state
        self._queues: dict[SamplingParams, _Queue] = {}
        self._drainer: asyncio.Task[None] | None = None

    # -- adapters -----------------------------------------------------------------------------

    @property
    def adapters(self) -> list[str]:
        return self._adapters.names

    async def load_adapter(self, name: str, path: str | Path) -> None:
        """Add a LoRA adapter at runtime under a new, immutable version name (async like the vLLM
        backend's, so hot-swap code treats both alike; the file reading runs in a thread)."""
        await asyncio.to_thread(self._locked, self._adapters.load, name, path)

    async def unload_adapter(self, name: str) -> None:
        await asyncio.to_thread(self._locked, self._adapters.unload, name)

    def _locked(self, fn: Callable[..., None], *args: Any) -> None:
        with self._lock:
            fn(*args)

    async def shutdown(self) -> None:
        """Nothing to stop (no processes); present so callers treat every backend alike."""

    # -- generation ---------------------------------------------------------------------------

    async def chat(
        self, conversations: Sequence[Sequence[ChatMessage]], sampling: SamplingParams
    ) -> list[Completion]:
        """One assistant reply per conversation, through the tokenizer's chat template; a reply
        ends at the model's end-of-turn token."""
        ids = [chat_prompt_ids(self.tokenizer, c) for c in conversations]
        return await self.generate(ids, sampling)

    async def generate(
        self, prompts: Sequence[Prompt], sampling: SamplingParams
    ) -> list[Completion]:
        """One completion per prompt (text, or the token ids to feed), in order; merged with
        concurrent calls of equal sampling."""
        if not prompts:
            return []
        if sampling.adapter is not None and sampling.adapter not in self._adapters.names:
            raise KeyError(f"unknown adapter {sampling.adapter!r}; loaded: {self.adapters}")
        future: asyncio.Future[list[Completion]] = asyncio.get_running_loop().create_future()
        pending = _Pending(list(prompts), sampling.seed, future)
        self._queues.setdefault(dataclasses.replace(sampling, seed=None), _Queue()).requests.append(
            pending
        )
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        """Run queued requests batch by batch; requests that arrive meanwhile join the next one."""
        while self._queues:
            sampling = next(iter(self._queues))
            queue = self._queues[sampling]
            batch: list[_Pending] = []
            size = 0
            while queue.requests and (
                not batch or size + len(queue.requests[0].prompts) <= self.max_batch_size
            ):
                request = queue.requests.pop(0)
                batch.append(request)
                size += len(request.prompts)
            if not queue.requests:
                del self._queues[sampling]
            prompts = [p for request in batch for p in request.prompts]
            seeds = [request.seed for request in batch for _ in request.prompts]
            try:
                completions = await asyncio.to_thread(self.generate_sync, prompts, sampling, seeds)
            except Exception as error:  # delivered to every caller of the failed batch
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(error)
                continue
            start = 0
            for request in batch:
                end = start + len(request.prompts)
                mine = completions[start:end]
                for completion in mine:  # the caller's wall time, queueing included
                    completion.latency_s = time.perf_counter() - request.enqueued
                if not request.future.done():
                    request.future.set_result(mine)
                start = end

    def generate_sync(
        self,
        prompts: Sequence[Prompt],
        sampling: SamplingParams,
        seeds: Sequence[int | None] | None = None,
    ) -> list[Completion]:
        """Blocking generation, in chunks of ``max_batch_size`` prompts; ``seeds`` (one per
        prompt) overrides ``sampling.seed`` row by row."""
        seeds = list(seeds) if seeds is not None else [sampling.seed] * len(prompts)
        out: list[Completion] = []
        for start in range(0, len(prompts), self.max_batch_size):
            stop = start + self.max_batch_size
            chunk = list(prompts[start:stop])
            began = time.perf_counter()
            with self._lock, torch.inference_mode(), self._adapters.active(sampling.adapter) as m:
                decoder = Decoder(m, self.tokenizer, self.device, self.max_positions)
                rows = decoder.run(chunk, sampling, self.eos_token_ids, seeds[start:stop])
            latency = time.perf_counter() - began
            model = self.name if sampling.adapter is None else f"{self.name}:{sampling.adapter}"
            for row in rows:
                out.append(
                    Completion(
                        text=row.text,
                        prompt_tokens=row.prompt_tokens,
                        prompt_token_ids=row.prompt_token_ids,
                        completion_tokens=len(row.token_ids),
                        token_ids=row.token_ids,
                        logprobs=row.logprobs if sampling.logprobs else None,
                        finish_reason=row.finish_reason,
                        model=model,
                        latency_s=latency,
                    )
                )
        return out

    # -- scoring ------------------------------------------------------------------------------

    async def score(
        self,
        prompts: Sequence[Prompt],
        completion_token_ids: Sequence[Sequence[int]],
        adapter: str | None = None,
    ) -> list[list[float]]:
        """Per-token RAW log-probs of given completions (teacher forcing), for checking what an
        engine reported against the model's own weights."""
        return await asyncio.to_thread(self.score_sync, prompts, completion_token_ids, adapter)

    def score_sync(
        self,
        prompts: Sequence[Prompt],
        completion_token_ids: Sequence[Sequence[int]],
        adapter: str | None = None,
    ) -> list[list[float]]:
        if len(prompts) != len(completion_token_ids):
            raise ValueError("one completion per prompt")
        out: list[list[float]] = []
        for start in range(0, len(prompts), self.max_batch_size):
            stop = start + self.max_batch_size
            out.extend(
                self._score_chunk(prompts[start:stop], completion_token_ids[start:stop], adapter)
            )
        return out

    def _score_chunk(
        self, prompts: Sequence[Prompt], completions: Sequence[Sequence[int]], adapter: str | None
    ) -> list[list[float]]:
        encoded = [encode_prompt(self.tokenizer, p) for p in prompts]
        rows = [list(p) + list(c) for p, c in zip(encoded, completions, strict=True)]
        width = max(len(r) for r in rows)
        pad = pad_id(self.tokenizer)
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=self.device)
        mask = torch.tensor(
            [[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self.device
        )
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with self._lock, torch.inference_mode(), self._adapters.active(adapter) as model:
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
            logprobs = token_logprobs(logits[:, :-1].float(), ids[:, 1:])  # (B, T-1)
        return [
            logprobs[b, logprobs.shape[1] - len(c) :].tolist() if c else []
            for b, c in enumerate(completions)
        ]
