"""The serving replica: a Ray Serve deployment with a FastAPI ingress (the Ray edge of serving).

Routes: OpenAI-compatible ``/v1/completions``, ``/v1/chat/completions`` and ``/v1/models``;
``/v1/reflect`` (a failed trial in, a reflection out); ``/healthz``. Every generation response
names the adapter version it ran on, in the ``model`` field (``retro@3``) and the
``x-retro-version`` header, with the alias table's epoch in ``x-retro-epoch``. Each request
resolves its model once, at the central controller (``controller.py``), then holds that version
on this replica until it finishes.

Bad input is always a 4xx in OpenAI's error shape: validation errors are 400 (not FastAPI's 422),
unknown models 404, oversized bodies 413, a missing or wrong bearer token 401. Metrics go through
``ray.util.metrics`` to Ray's Prometheus endpoint.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

import ray
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from ray.util import metrics
from starlette.exceptions import HTTPException

from retro_ray.envs.base import Step, Task, Trajectory
from retro_ray.llm.base import Completion, SamplingParams
from retro_ray.llm.templates import Prompt, chat_prompt_ids, encode_prompt, has_chat_template
from retro_ray.reflection.prompt import clean_reflection, reflection_messages, reflection_prompt
from retro_ray.registry import AdapterRegistry
from retro_ray.registry.validation import AdapterRejected, is_valid_model_name
from retro_ray.serve.guard import ReplicaSettings, RequestGuard, make_engine
from retro_ray.serve.openai_api import (
    APIError,
    ChatRequest,
    CompletionRequest,
    ReflectRequest,
    ReflectResponse,
    chat_response,
    completion_response,
    error_response,
    models_response,
)
from retro_ray.serve.runtime import CapacityError, ReplicaRuntime

logger = logging.getLogger(__name__)
GREEDY_BELOW = 1e-5

api = FastAPI(title="retro_ray", version="1", docs_url=None, redoc_url=None)
api.add_middleware(RequestGuard)


@api.exception_handler(RequestValidationError)
async def _invalid(_request: Any, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    message = f"{'.'.join(loc) or 'body'}: {first.get('msg', 'invalid request')}"
    return error_response(400, message, ".".join(loc) or None, "invalid_value")


@api.exception_handler(HTTPException)
async def _http(_request: Any, exc: HTTPException) -> JSONResponse:
    return error_response(exc.status_code, str(exc.detail), headers=exc.headers)


@api.exception_handler(APIError)
async def _api_error(_request: Any, exc: APIError) -> JSONResponse:
    return exc.response()


@api.exception_handler(CapacityError)
async def _capacity(_request: Any, exc: CapacityError) -> JSONResponse:
    return error_response(503, str(exc), code="overloaded", headers={"retry-after": "1"})


@api.exception_handler(AdapterRejected)
async def _unavailable(_request: Any, exc: AdapterRejected) -> JSONResponse:
    """A stored version failed its checksum: a server-side fault, never served."""
    return error_response(503, f"version unavailable: {exc}", code="version_unavailable")


def _replica_name() -> str:
    """This replica in the controller's swap reports (``replica <name>: version 3: <error>``):
    Serve's replica id and the node's address, which say where its logs are."""
    try:
        replica = serve.get_replica_context().replica_id.unique_id
    except Exception:  # outside a Serve replica
        replica = uuid.uuid4().hex[:8]
    return f"{replica}@{ray.util.get_node_ip_address()}"


def _with_version(
    payload: dict[str, Any], model: str, epoch: int, adapter_version: bool = False
) -> JSONResponse:
    """The response, its served version in headers; with ``adapter_version`` (asked for with
    ``return_token_ids``) also the registry version as an integer in the body (0: the base
    model), so the client logs the number, not a name to parse."""
    if adapter_version:
        payload["adapter_version"] = _version_number(model)
    return JSONResponse(payload, headers={"x-retro-version": model, "x-retro-epoch": str(epoch)})


def _version_number(model: str) -> int:
    """``retro@3`` -> 3; the base model, served under its own name, is version 0."""
    _, at, version = model.rpartition("@")
    return int(version) if at and version.isdigit() else 0


# Defined after every module-level name it uses: ``serve.ingress`` captures the class (by value)
# as soon as it is decorated.
@serve.deployment
@serve.ingress(api)
class RetroServer:
    async def __init__(self, settings: ReplicaSettings) -> None:
        import torch

        from retro_ray.serve import guard  # the module's own GUARD, which the middleware reads

        torch.set_num_threads(settings.cpu_threads)
        guard.GUARD.configure(settings.token_sha256, settings.max_request_bytes)
        self.settings = settings
        self.controller = ray.get_actor(settings.controller_name, namespace=settings.namespace)
        self.engine = make_engine(settings)
        self.tokenizer = self.engine.tokenizer
        registry = AdapterRegistry(
            settings.registry_root,
            settings.model_dir,
            settings.adapter_name,
            settings.max_lora_rank,
        )
        self.runtime = ReplicaRuntime(
            self.engine, registry.verify, registry.version_name, settings.max_loras
        )
        self._requests = metrics.Counter(
            "retro_serve_requests", "HTTP requests by route and status", ("route", "status")
        )
        self._errors = metrics.Counter(
            "retro_serve_errors", "Requests answered with an error", ("route", "status")
        )
        self._latency = metrics.Histogram(
            "retro_serve_latency_s", "Request latency", [0.01, 0.05, 0.1, 0.5, 1, 5, 30], ("route",)
        )
        self._version = metrics.Gauge("retro_serve_version", "Served version per alias", ("alias",))
        # Warm up before taking traffic (vLLM's first request is slow), then join the swaps.
        await self.engine.generate(["warm up"], SamplingParams(max_tokens=2))
        self.replica_id = _replica_name()
        self._generation, wanted = await self.controller.register.remote(self.replica_id)
        await self.runtime.sync(wanted)
        await self.controller.report.remote(
            self.replica_id, self.runtime.loaded, self.runtime.failed
        )
        self._sync_task = asyncio.create_task(self._sync_loop())

    async def _sync_loop(self) -> None:
        """Phase 1 of every swap, on this replica: load what the controller wants, report."""
        while True:
            try:
                generation, wanted = await self.controller.wait_for_work.remote(
                    self.replica_id, self._generation, 1.0
                )
                if generation != self._generation:
                    await self.runtime.sync(wanted)
                    await self.controller.report.remote(
                        self.replica_id, self.runtime.loaded, self.runtime.failed
                    )
                    self._generation = generation
                    table = await self.controller.table.remote()
                    for alias, version in table["aliases"].items():
                        self._version.set(version, tags={"alias": alias})
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("adapter sync failed; retrying")
                await asyncio.sleep(1.0)

    async def __del__(self) -> None:
        self._sync_task.cancel()
        await self.controller.unregister.remote(self.replica_id)
        await self.engine.shutdown()

    # -- routes -------------------------------------------------------------------------------

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/v1/models")
    async def models(self) -> dict[str, Any]:
        table = await self.controller.table.remote()
        name = self.settings.adapter_name
        names = [self.settings.model_name, name, *table["aliases"]]
        names += [f"{name}@{v}" for v in table["versions"]]
        return models_response(names)

    @api.post("/v1/completions")
    async def completions(self, body: CompletionRequest) -> JSONResponse:
        async def run() -> JSONResponse:
            logprobs = body.logprobs is not None
            sampling = self._sampling(body, body.max_tokens or 16, logprobs, body.stops())
            out, model, epoch = await self._generate(body.model, body.prompts(), sampling)
            payload = completion_response(
                out, model, self.tokenizer, logprobs, body.return_token_ids
            )
            return _with_version(payload, model, epoch, body.return_token_ids)

        return await self._tracked("completions", run)

    @api.post("/v1/chat/completions")
    async def chat(self, body: ChatRequest) -> JSONResponse:
        async def run() -> JSONResponse:
            prompt = self._chat_prompt(body)
            sampling = self._sampling(body, body.budget(16), body.logprobs, body.stops())
            out, model, epoch = await self._generate(body.model, [prompt], sampling)
            payload = chat_response(
                out[0], model, self.tokenizer, body.logprobs, body.return_token_ids
            )
            return _with_version(payload, model, epoch, body.return_token_ids)

        return await self._tracked("chat", run)

    @api.post("/v1/reflect", response_model=ReflectResponse)
    async def reflect(self, body: ReflectRequest) -> JSONResponse:
        async def run() -> JSONResponse:
            task = Task(env="request", task_id="request", split="test")
            steps = [Step(s.action, s.observation, s.reward) for s in body.trajectory]
            trajectory = Trajectory(task, 0, body.task, steps, score=body.return_)
            prompt, stop = self._reflection_prompt(trajectory, body.reflections)
            sampling = self._sampling(body, body.max_tokens, True, stop)
            (out,), model, epoch = await self._generate(body.model, [prompt], sampling)
            s = self.settings
            payload = ReflectResponse(
                reflection=clean_reflection(out.text, s.reflection_max_chars),
                model=model,
                epoch=epoch,
                prompt_tokens=out.prompt_tokens,
                completion_tokens=out.completion_tokens,
                token_ids=out.token_ids or [],
                logprobs=out.logprobs,
            )
            return _with_version(payload.model_dump(), model, epoch)

        return await self._tracked("reflect", run)

    # -- helpers ------------------------------------------------------------------------------

    async def _generate(
        self, model: str, prompts: list[Prompt], sampling: SamplingParams
    ) -> tuple[list[Completion], str, int]:
        if not is_valid_model_name(model):
            raise APIError(400, f"invalid model name {model[:64]!r}", "model", "invalid_model")
        resolution = await self.controller.lookup.remote(model)
        if resolution is None:
            raise APIError(404, f"model {model!r} does not exist", "model", "model_not_found")
        limit = self.settings.max_context
        for prompt in prompts:
            if len(encode_prompt(self.tokenizer, prompt)) + sampling.max_tokens > limit:
                raise APIError(
                    400,
                    f"prompt plus max_tokens exceeds the context of {limit} tokens",
                    "prompt",
                    "context_length_exceeded",
                )
        out = await self.runtime.generate(prompts, sampling, resolution.version)
        return out, resolution.model, resolution.epoch

    def _sampling(
        self, body: Any, max_tokens: int, logprobs: bool, stop: tuple[str, ...]
    ) -> SamplingParams:
        if max_tokens > self.settings.max_tokens_limit:
            limit = self.settings.max_tokens_limit
            raise APIError(400, f"max_tokens must be <= {limit}", "max_tokens", "invalid_value")
        return SamplingParams(
            max_tokens=max_tokens,
            # As vLLM does: below 1e-5 is greedy (1/T overflows the logits; found by the fuzz).
            temperature=0.0 if body.temperature < GREEDY_BELOW else body.temperature,
            top_p=body.top_p,
            stop=stop,
            logprobs=logprobs,
            seed=body.seed,
        )

    def _reflection_prompt(
        self, trajectory: Trajectory, reflections: list[str]
    ) -> tuple[Prompt, tuple[str, ...]]:
        """The reflection prompt in the served model's language, and its stop strings: through
        the chat template where the tokenizer has one (the reply ends at the model's end-of-turn
        token), else the completion text ending in ``Reflection:`` (the reply is one line), as
        the reflector client sends it (``reflector.prompt_format``)."""
        s = self.settings
        if has_chat_template(self.tokenizer):
            messages = reflection_messages(
                s.instruction, trajectory, reflections, s.trajectory_max_chars
            )
            return chat_prompt_ids(self.tokenizer, messages), ()
        text = reflection_prompt(s.instruction, trajectory, reflections, s.trajectory_max_chars)
        return text, ("\n",)

    def _chat_prompt(self, body: ChatRequest) -> Prompt:
        """The chat template's token ids where the tokenizer has one (the template writes the
        model's special tokens: none are added again); else the messages' text, one a line (the
        tiny models take plain prompts: a single user message is sent as is)."""
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        if has_chat_template(self.tokenizer):
            return chat_prompt_ids(self.tokenizer, messages)
        return "\n".join(m["content"] for m in messages)

    async def _tracked(self, route: str, run: Any) -> JSONResponse:
        began = time.perf_counter()
        status = 500
        try:
            response = await run()
            status = response.status_code
            return response
        except APIError as exc:
            status = exc.status
            raise
        except (CapacityError, AdapterRejected):
            status = 503
            raise
        finally:
            self._requests.inc(tags={"route": route, "status": str(status)})
            if status >= 400:
                self._errors.inc(tags={"route": route, "status": str(status)})
            self._latency.observe(time.perf_counter() - began, tags={"route": route})
