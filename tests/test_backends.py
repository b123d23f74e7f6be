"""The local LLM backends: the torch reference (fast tests) and vLLM against it (slow: one engine
for the whole module).

Parity tolerance between vLLM-CPU and torch in float32 on the tiny model: greedy tokens, text and
finish reasons identical; per-token RAW log-probs within LOGPROB_ATOL = 1e-3 absolute. Measured
here (vllm-cpu 0.32, torch 2.13): max 3.8e-6 for the base model, 7.6e-6 with a LoRA adapter, and
1.2e-5 between vLLM's log-probs of tokens sampled at temperature 0.5 and torch's teacher-forced
score of the same tokens; the bound leaves room for other CPUs' kernels and bfloat16-free GPUs.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator

import pytest

from retro_ray.llm.base import SamplingParams
from retro_ray.llm.torch_backend import TorchBackend
from tests.support.extras import require_vllm
from tests.support.tiny_model import TinyModel, build_tiny_model

LOGPROB_ATOL = 1e-3
PROMPTS = [
    "> Search[Alice Kay]\n",
    "> Lookup[married]\nReflection: search",
    "Bob Lee was taught by",
    "> Search[Eve Park]\nEve Park worked with Gus Hale.\n> Lookup[worked]\n",
]
GREEDY = SamplingParams(max_tokens=12, temperature=0.0, logprobs=True)


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return build_tiny_model(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="module")
def torch_backend(tiny: TinyModel) -> TorchBackend:
    return TorchBackend(tiny.model_dir, adapters={k: str(v) for k, v in tiny.adapters.items()})


def max_abs_diff(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b)
    return max((abs(x - y) for x, y in zip(a, b, strict=True)), default=0.0)


def test_zoo_special_tokens_are_explicit(tiny: TinyModel) -> None:
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    tok = AutoTokenizer.from_pretrained(tiny.model_dir)
    config = AutoConfig.from_pretrained(tiny.model_dir)
    gen = GenerationConfig.from_pretrained(tiny.model_dir)
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    for cfg in (config, gen):
        assert (cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id) == (0, 1, 2)
    ids = tok("> Search[Alice Kay]")["input_ids"]
    assert ids[0] == 1 and 2 not in ids
    assert tok.decode(ids, skip_special_tokens=True) == "> Search[Alice Kay]"


def test_batched_equals_unbatched_greedy(torch_backend: TorchBackend) -> None:
    batched = run(torch_backend.generate(PROMPTS, GREEDY))
    for prompt, got in zip(PROMPTS, batched, strict=True):
        alone = run(torch_backend.generate([prompt], GREEDY))[0]
        assert got.token_ids == alone.token_ids and got.text == alone.text
        assert max_abs_diff(got.logprobs, alone.logprobs) < 1e-4
        assert got.completion_tokens == len(got.token_ids)
        eos = torch_backend.eos_token_id
        if got.token_ids[-1] == eos:  # the end-of-sequence token stays in the ids, not the text
            assert got.finish_reason == "stop" and "<eos>" not in got.text
        else:
            assert got.finish_reason == "length" and len(got.token_ids) == 12
    assert any(c.token_ids[-1] == torch_backend.eos_token_id for c in batched)


def test_concurrent_calls_are_merged_and_keep_order(torch_backend: TorchBackend) -> None:
    async def both():
        sep = [await torch_backend.generate([p], GREEDY) for p in PROMPTS]
        merged = await asyncio.gather(*(torch_backend.generate([p], GREEDY) for p in PROMPTS))
        return sep, merged

    separate, merged = run(both())
    assert [c[0].token_ids for c in separate] == [c[0].token_ids for c in merged]


def test_stop_strings_cut_text_and_tokens(torch_backend: TorchBackend) -> None:
    full = run(torch_backend.generate(PROMPTS[:1], GREEDY))[0]
    tok = torch_backend.tokenizer
    stop = tok.decode(full.token_ids[5:7])
    assert stop.strip()
    got = run(torch_backend.generate(PROMPTS[:1], SamplingParams(max_tokens=12, stop=(stop,))))[0]
    assert got.finish_reason == "stop"
    assert got.text == full.text[: full.text.find(stop)]
    assert got.token_ids == full.token_ids[: len(got.token_ids)]
    assert stop in tok.decode(got.token_ids) and stop not in tok.decode(got.token_ids[:-1])


def test_lora_changes_outputs_and_none_restores_base(tiny: TinyModel) -> None:
    backend = TorchBackend(tiny.model_dir)
    base = run(backend.generate(PROMPTS, GREEDY))
    run(backend.load_adapter("retro@1", tiny.adapters["a"]))
    with_a = run(
        backend.generate(PROMPTS, SamplingParams(**{**GREEDY.__dict__, "adapter": "retro@1"}))
    )
    assert [c.token_ids for c in with_a] != [c.token_ids for c in base]
    assert with_a[0].model.endswith(":retro@1")
    again = run(backend.generate(PROMPTS, GREEDY))
    assert [c.token_ids for c in again] == [c.token_ids for c in base]
    with pytest.raises(ValueError, match="new version name"):
        run(backend.load_adapter("retro@1", tiny.adapters["b"]))
    run(backend.unload_adapter("retro@1"))
    with pytest.raises(KeyError):
        run(backend.generate(PROMPTS, SamplingParams(adapter="retro@1")))
    assert [c.token_ids for c in run(backend.generate(PROMPTS, GREEDY))] == [
        c.token_ids for c in base
    ]


@pytest.mark.parametrize("adapter", [None, "a"])
def test_score_equals_generation_logprobs(torch_backend: TorchBackend, adapter: str | None) -> None:
    sampling = SamplingParams(
        max_tokens=10, temperature=1.0, logprobs=True, seed=7, adapter=adapter
    )
    gen = run(torch_backend.generate(PROMPTS, sampling))
    scored = run(torch_backend.score(PROMPTS, [c.token_ids for c in gen], adapter=adapter))
    for completion, logprobs in zip(gen, scored, strict=True):
        assert max_abs_diff(completion.logprobs, logprobs) < 1e-4


def test_seeded_sampling_does_not_depend_on_batch(torch_backend: TorchBackend) -> None:
    sampling = SamplingParams(max_tokens=10, temperature=1.0, top_p=0.9, seed=3)
    alone = run(torch_backend.generate(PROMPTS[:1], sampling))[0]
    batched = run(torch_backend.generate(PROMPTS, sampling))[0]
    other_seed = run(
        torch_backend.generate(PROMPTS[:1], SamplingParams(**{**sampling.__dict__, "seed": 4}))
    )[0]
    assert alone.token_ids == batched.token_ids
    assert alone.token_ids != other_seed.token_ids


def test_requests_with_different_seeds_share_a_batch(torch_backend: TorchBackend) -> None:
    """Every evaluation request carries its own seed; concurrent ones still merge into one batch,
    each row drawing from its own generator (as if it ran alone)."""
    base = SamplingParams(max_tokens=10, temperature=1.0)
    seeded = [dataclasses.replace(base, seed=100 + i) for i in range(len(PROMPTS))]
    alone = [
        run(torch_backend.generate([p], s))[0].token_ids
        for p, s in zip(PROMPTS, seeded, strict=True)
    ]
    calls: list[int] = []
    original = torch_backend.generate_sync

    def counting(prompts, sampling, seeds=None):
        calls.append(len(prompts))
        return original(prompts, sampling, seeds)

    torch_backend.generate_sync = counting  # type: ignore[method-assign]
    try:

        async def together():
            return await asyncio.gather(
                *(torch_backend.generate([p], s) for p, s in zip(PROMPTS, seeded, strict=True))
            )

        merged = [c[0].token_ids for c in run(together())]
    finally:
        del torch_backend.generate_sync
    assert merged == alone
    assert calls == [len(PROMPTS)]  # one batch for all the seeds


# -- vLLM against the torch reference (one engine for the module) -------------------------------


class EngineLoop:
    """A vLLM backend and the one event loop it lives on: AsyncLLM binds its output handler to
    the loop of its first request, so every test must use that same loop."""

    def __init__(self, backend, loop: asyncio.AbstractEventLoop) -> None:
        self.backend = backend
        self.loop = loop

    def run(self, coro):
        return self.loop.run_until_complete(coro)


@pytest.fixture(scope="module")
def vllm_engine(tiny: TinyModel) -> Iterator[EngineLoop]:
    require_vllm()
    from retro_ray.llm.vllm_backend import VLLMBackend

    loop = asyncio.new_event_loop()
    backend = VLLMBackend(
        tiny.model_dir,
        adapters={k: str(v) for k, v in tiny.adapters.items()},
        dtype="float32",  # vLLM's "auto" would downcast a float32 model to 16 bits on GPUs
        max_lora_rank=8,
        max_model_len=512,
    )
    engine = EngineLoop(backend, loop)
    yield engine
    engine.run(backend.shutdown())
    loop.close()


@pytest.mark.slow
@pytest.mark.parametrize("adapter", [None, "a", "b"])
def test_vllm_greedy_matches_torch(
    vllm_engine: EngineLoop, torch_backend: TorchBackend, adapter: str | None
) -> None:
    sampling = SamplingParams(max_tokens=16, temperature=0.0, logprobs=True, adapter=adapter)
    want = run(torch_backend.generate(PROMPTS, sampling))
    got = vllm_engine.run(vllm_engine.backend.generate(PROMPTS, sampling))
    worst = 0.0
    for w, g in zip(want, got, strict=True):
        assert g.token_ids == w.token_ids
        assert g.text == w.text and g.finish_reason == w.finish_reason
        assert g.prompt_tokens == w.prompt_tokens
        worst = max(worst, max_abs_diff(g.logprobs, w.logprobs))
    print(f"adapter={adapter}: max |logprob vllm - torch| = {worst:.2e}")
    assert worst < LOGPROB_ATOL


@pytest.mark.slow
def test_vllm_sampled_logprobs_are_raw_and_match_torch_score(
    vllm_engine: EngineLoop, torch_backend: TorchBackend
) -> None:
    """At temperature 0.5 vLLM v1 still reports log-probs of the unscaled logits."""
    sampling = SamplingParams(max_tokens=16, temperature=0.5, logprobs=True, seed=11, adapter="a")
    got = vllm_engine.run(vllm_engine.backend.generate(PROMPTS, sampling))
    scored = run(torch_backend.score(PROMPTS, [c.token_ids for c in got], adapter="a"))
    worst = max(max_abs_diff(c.logprobs, s) for c, s in zip(got, scored, strict=True))
    print(f"sampled: max |logprob vllm - torch score| = {worst:.2e}")
    assert worst < LOGPROB_ATOL


@pytest.mark.slow
def test_vllm_stop_strings_match_torch(
    vllm_engine: EngineLoop, torch_backend: TorchBackend
) -> None:
    full = run(torch_backend.generate(PROMPTS, GREEDY))
    stops = tuple({torch_backend.tokenizer.decode(c.token_ids[4:6]) for c in full})
    sampling = SamplingParams(max_tokens=12, stop=stops)
    want = run(torch_backend.generate(PROMPTS, sampling))
    got = vllm_engine.run(vllm_engine.backend.generate(PROMPTS, sampling))
    assert any(w.finish_reason == "stop" for w in want)
    for w, g in zip(want, got, strict=True):
        assert (g.text, g.token_ids, g.finish_reason) == (w.text, w.token_ids, w.finish_reason)


@pytest.mark.slow
def test_vllm_lora_per_request_and_runtime_adapters(
    vllm_engine: EngineLoop, torch_backend: TorchBackend, tiny: TinyModel
) -> None:
    backend = vllm_engine.backend

    async def mixed():
        calls = [
            backend.generate(PROMPTS, SamplingParams(max_tokens=12, adapter=adapter))
            for adapter in (None, "a", "b", None, "a")
        ]
        return await asyncio.gather(*calls)

    base, a, b, base2, a2 = vllm_engine.run(mixed())
    ids = [[c.token_ids for c in batch] for batch in (base, a, b, base2, a2)]
    assert ids[0] == ids[3] and ids[1] == ids[4]
    assert ids[0] != ids[1] and ids[1] != ids[2] and ids[0] != ids[2]

    vllm_engine.run(backend.load_adapter("a@2", tiny.adapters["a"]))
    again = vllm_engine.run(backend.generate(PROMPTS, SamplingParams(max_tokens=12, adapter="a@2")))
    assert [c.token_ids for c in again] == ids[1]
    with pytest.raises(ValueError, match="new version name"):
        vllm_engine.run(backend.load_adapter("a@2", tiny.adapters["b"]))
    vllm_engine.run(backend.unload_adapter("a@2"))
    with pytest.raises(KeyError):
        vllm_engine.run(backend.generate(PROMPTS, SamplingParams(adapter="a@2")))


@pytest.mark.slow
def test_vllm_seeded_batch_larger_than_one_step(vllm_engine: EngineLoop) -> None:
    """Regression: 64 seeded prompts of about 60 tokens exceed vLLM's default 2048-token step;
    with chunked prefill a split seeded prompt crashed the CPU engine."""
    prompts = [" ".join(PROMPTS) + f" {i}" for i in range(64)]
    assert sum(len(vllm_engine.backend.tokenizer(p)["input_ids"]) for p in prompts) > 2048
    sampling = SamplingParams(max_tokens=4, temperature=1.0, seed=5)
    first = vllm_engine.run(vllm_engine.backend.generate(prompts, sampling))
    again = vllm_engine.run(vllm_engine.backend.generate(prompts[:1], sampling))
    assert len(first) == 64 and first[0].token_ids == again[0].token_ids


@pytest.mark.slow
def test_vllm_failed_load_registers_nothing_and_a_retry_lands(
    vllm_engine: EngineLoop, tiny: TinyModel, tmp_path
) -> None:
    """Regression: the name was registered before ``add_lora`` ran, so after one failed load
    every retry of the hot-swap was refused as "already loaded"."""
    import shutil

    backend = vllm_engine.backend
    broken = tmp_path / "adapter"
    shutil.copytree(tiny.adapters["b"], broken)
    weights = broken / "adapter_model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(b"\x00" * 512)
    with pytest.raises(Exception):  # noqa: B017 (vLLM's own error type for a corrupt file)
        vllm_engine.run(backend.load_adapter("b@9", broken))
    assert "b@9" not in backend.adapters
    weights.write_bytes(good)
    vllm_engine.run(backend.load_adapter("b@9", broken))  # the retry of the same version
    sampling = SamplingParams(max_tokens=12)
    got = vllm_engine.run(backend.generate(PROMPTS, dataclasses.replace(sampling, adapter="b@9")))
    want = vllm_engine.run(backend.generate(PROMPTS, dataclasses.replace(sampling, adapter="b")))
    assert [c.token_ids for c in got] == [c.token_ids for c in want]
    vllm_engine.run(backend.unload_adapter("b@9"))
