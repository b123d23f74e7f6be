"""OpenAI's published API schema (``../shared/data/openai/openapi.json``, OpenAPI 3.1) as a
validator of response bodies: ``violations(path, method, status, body)`` lists every way a body
breaks the schema the spec gives that route and status (``$ref``s resolved across the whole
document with ``referencing``; JSON Schema 2020-12, the dialect of OpenAPI 3.1).

A status the route does not list is checked against ``ErrorResponse`` when its body is an error,
since the spec defines that one shape for every error it documents (``TooManyRequests``)."""

from __future__ import annotations

import functools
import json
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.support.shared_data import SHARED_DATA

SPEC_PATH = SHARED_DATA / "openai" / "openapi.json"
SPEC_URI = "urn:openai:openapi"
ERROR_SCHEMA = "#/components/schemas/ErrorResponse"


@functools.cache
def spec() -> dict[str, Any]:
    return json.loads(SPEC_PATH.read_text())


@functools.cache
def _registry() -> Registry:
    resource = Resource.from_contents(spec(), default_specification=DRAFT202012)
    return Registry().with_resource(SPEC_URI, resource)


@functools.cache
def validator(pointer: str) -> Draft202012Validator:
    """A validator of the schema at ``pointer`` (``#/components/schemas/...``) of the spec."""
    return Draft202012Validator({"$ref": f"{SPEC_URI}{pointer}"}, registry=_registry())


def response_schema(path: str, method: str, status: int) -> str:
    """The JSON pointer of the schema the spec gives a response (``path`` as in the spec, without
    ``/v1``: ``/chat/completions``); ``ErrorResponse`` for an error status it does not list."""
    operation = spec()["paths"][path][method.lower()]
    response = operation["responses"].get(str(status))
    if response is None:
        if status < 400:
            raise KeyError(f"the spec lists no {status} response for {method} {path}")
        return ERROR_SCHEMA
    if "$ref" in response:  # a shared response, e.g. #/components/responses/TooManyRequests
        ref = response["$ref"].removeprefix("#/")
        response = functools.reduce(lambda node, key: node[key], ref.split("/"), spec())
    schema = response["content"]["application/json"]["schema"]
    return schema["$ref"]


def violations(path: str, method: str, status: int, body: Any) -> list[str]:
    """Every schema error of ``body`` as ``at.path: message`` (empty when it conforms)."""
    pointer = response_schema(path, method, status)
    errors = sorted(validator(pointer).iter_errors(body), key=lambda e: list(e.absolute_path))
    return [
        f"{'.'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message[:300]}"
        for e in errors
    ]


def request_violations(path: str, method: str, body: Any) -> list[str]:
    """Every schema error of a request body (what the official client sends must conform)."""
    operation = spec()["paths"][path][method.lower()]
    pointer = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    errors = validator(pointer).iter_errors(body)
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}" for e in errors]
