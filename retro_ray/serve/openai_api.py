"""Request and response shapes of the OpenAI-compatible API (completions, chat, models), of
``/v1/reflect``, and OpenAI's error shape.

Departures from OpenAI, on purpose: ``n`` must be 1, ``stream`` and ``echo`` must be false (the
trial loop and the learner need neither); ``logprobs`` reports the sampled token's log-prob
(RAW, pre-temperature, as vLLM v1 returns it) and ``top_logprobs`` holds only that token; the
vLLM extension ``return_token_ids`` adds the sampled token ids to each choice and the prompt's ids
as the engine saw them (``prompt_token_ids``: on each choice of a completion, on a chat response
itself), plus our ``adapter_version`` (the registry version that answered, an integer): the
learner trains on exactly those ids, and the driver needs no tokenizer. Unknown extra fields are accepted and ignored, as OpenAI's servers do.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from retro_ray.llm.base import Completion
from retro_ray.registry import PROD_ALIAS

MAX_PROMPTS = 16


def _utf8(text: str) -> str:
    """JSON admits lone surrogates (``"\\ud800"``) that no tokenizer can encode: a 400, not a 500."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("string is not valid UTF-8 (lone surrogate)") from exc
    return text


Text = Annotated[str, Field(max_length=200_000), AfterValidator(_utf8)]
StopText = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_utf8)]
Stop = StopText | Annotated[list[StopText], Field(max_length=4)] | None
Seed = Annotated[int, Field(ge=0, le=2**63 - 1)] | None
Temperature = Annotated[float, Field(ge=0.0, le=2.0, allow_inf_nan=False)]
TopP = Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False)]
ModelName = Annotated[str, Field(min_length=1, max_length=128)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: ModelName
    temperature: Temperature = 1.0
    top_p: TopP = 1.0
    n: Annotated[int, Field(ge=1, le=1)] = 1
    stream: Literal[False] = False
    stop: Stop = None
    seed: Seed = None
    return_token_ids: bool = False

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class CompletionRequest(_Request):
    prompt: Text | Annotated[list[Text], Field(min_length=1, max_length=MAX_PROMPTS)]
    max_tokens: Annotated[int, Field(ge=1)] | None = 16
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    echo: Literal[False] = False

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class TextPart(BaseModel):
    type: Literal["text"]
    text: Text


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | Annotated[list[TextPart], Field(max_length=64)] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatRequest(_Request):
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=64)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None

    def budget(self, default: int) -> int:
        return self.max_completion_tokens or self.max_tokens or default


class StepIn(BaseModel):
    action: Annotated[Text, Field(max_length=2_000)]
    observation: Annotated[Text, Field(max_length=20_000)]
    reward: Annotated[float, Field(allow_inf_nan=False)] = 0.0


class ReflectRequest(BaseModel):
    """One failed trial in, one reflection out (the retrospective model's single job)."""

    model_config = ConfigDict(populate_by_name=True)

    task: Annotated[Text, Field(max_length=20_000)]
    trajectory: Annotated[list[StepIn], Field(max_length=200)]
    return_: Annotated[float, Field(alias="return", allow_inf_nan=False)] = 0.0
    reflections: Annotated[
        list[Annotated[Text, Field(max_length=2_000)]], Field(max_length=16)
    ] = []
    model: ModelName = PROD_ALIAS
    max_tokens: Annotated[int, Field(ge=1)] = 64
    temperature: Temperature = 0.0
    top_p: TopP = 1.0
    seed: Seed = None


class ReflectResponse(BaseModel):
    reflection: str
    model: str  # the adapter version that wrote it, e.g. "retro@3"
    epoch: int
    prompt_tokens: int
    completion_tokens: int
    token_ids: list[int]
    logprobs: list[float] | None


# -- responses ----------------------------------------------------------------------------------


def _token_texts(tokenizer: Any, ids: list[int]) -> list[str]:
    return [tokenizer.decode([i]) for i in ids]


def completion_response(
    completions: list[Completion],
    model: str,
    tokenizer: Any,
    logprobs: bool,
    token_ids: bool,
) -> dict[str, Any]:
    choices = []
    for index, c in enumerate(completions):
        choice: dict[str, Any] = {
            "index": index,
            "text": c.text,
            "finish_reason": c.finish_reason or "stop",
            "logprobs": None,
        }
        if logprobs and c.logprobs is not None:
            tokens = _token_texts(tokenizer, c.token_ids or [])
            offsets, at = [], 0
            for token in tokens:
                offsets.append(at)
                at += len(token)
            choice["logprobs"] = {
                "tokens": tokens,
                "token_logprobs": c.logprobs,
                "top_logprobs": [{t: lp} for t, lp in zip(tokens, c.logprobs, strict=True)],
                "text_offset": offsets,
            }
        if token_ids:
            choice["token_ids"] = c.token_ids
            choice["prompt_token_ids"] = c.prompt_token_ids
        choices.append(choice)
    return {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": _usage(completions),
    }


def chat_response(
    completion: Completion, model: str, tokenizer: Any, logprobs: bool, token_ids: bool
) -> dict[str, Any]:
    choice: dict[str, Any] = {
        "index": 0,
        # OpenAI's schema requires ``refusal`` (null: no refusal) on the message and its log-probs.
        "message": {"role": "assistant", "content": completion.text, "refusal": None},
        "finish_reason": completion.finish_reason or "stop",
        "logprobs": None,
    }
    if logprobs and completion.logprobs is not None:
        tokens = _token_texts(tokenizer, completion.token_ids or [])
        choice["logprobs"] = {
            "content": [
                {
                    "token": t,
                    "logprob": lp,
                    "bytes": list(t.encode()),
                    "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())}],
                }
                for t, lp in zip(tokens, completion.logprobs, strict=True)
            ],
            "refusal": None,
        }
    if token_ids:
        choice["token_ids"] = completion.token_ids
    payload = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": _usage([completion]),
    }
    if token_ids:  # as vLLM's server: the templated prompt's ids on the response itself
        payload["prompt_token_ids"] = completion.prompt_token_ids
    return payload


def models_response(names: list[str]) -> dict[str, Any]:
    now = int(time.time())
    return {
        "object": "list",
        "data": [
            {"id": n, "object": "model", "created": now, "owned_by": "retro_ray"} for n in names
        ],
    }


def _usage(completions: list[Completion]) -> dict[str, int]:
    prompt = sum(c.prompt_tokens for c in completions)
    completion = sum(c.completion_tokens for c in completions)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


# -- errors -------------------------------------------------------------------------------------

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    503: "server_error",
}


class APIError(Exception):
    """An error answered in OpenAI's shape; 4xx for anything the client sent wrong."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        return error_response(self.status, self.message, self.param, self.code, headers)


def error_response(
    status: int,
    message: str,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {
        "error": {
            "message": message,
            "type": _ERROR_TYPES.get(status, "invalid_request_error"),
            "param": param,
            "code": code,
        }
    }
    return JSONResponse(body, status_code=status, headers=headers)
