"""Make vLLM's OpenAI responses conform to OpenAI's published schemas.

vLLM serializes every optional field, so its responses carry `null` where OpenAI's schema
says a field is absent or never null (`annotations`, `function_call`, `service_tier`,
`usage.prompt_tokens_details`, ...). `conform` walks a response along the schema and drops
those nulls; it fills what vLLM leaves out of a required field when the schema allows an empty
value (Responses' `logprobs` as [], its `error` as null). Values the schema allows are left
untouched. Extra vLLM fields with values
(e.g. `stop_reason`) stay: OpenAI's schemas allow additional properties.

`openai_schemas.json` is the subset of OpenAI's OpenAPI description (openai-openapi, MIT)
that our responses use, regenerated with:

    python -m serve_app.http.conformance path/to/openai-openapi.json
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any

SCHEMAS_PATH = Path(__file__).with_name("openai_schemas.json")
ROOT_SCHEMAS = (
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateCompletionResponse",
    "ListModelsResponse",
    "ErrorResponse",
    "Response",
    "ResponseStreamEvent",
    "CreateEmbeddingResponse",
)


@functools.cache
def schemas() -> dict[str, Any]:
    return json.loads(SCHEMAS_PATH.read_text())


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = schemas()[schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _allows_null(schema: dict[str, Any]) -> bool:
    schema = _resolve(schema)
    kind = schema.get("type")
    if kind == "null" or (isinstance(kind, list) and "null" in kind) or schema.get("nullable"):
        return True
    return any(_allows_null(s) for s in schema.get("anyOf", []) + schema.get("oneOf", []))


def _branch(schema: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """The part of `schema` that describes a value of JSON type `kind` (object/array)."""
    schema = _resolve(schema)
    if "allOf" in schema:
        merged: dict[str, Any] = {"type": kind, "properties": {}, "required": []}
        for part in schema["allOf"]:
            sub = _branch(part, kind)
            if sub:
                merged["properties"].update(sub.get("properties", {}))
                merged["required"] += sub.get("required", [])
        return merged
    for option in schema.get("anyOf", []) + schema.get("oneOf", []):
        sub = _branch(option, kind)
        if sub is not None:
            return sub
    if schema.get("type") == kind or (kind == "object" and "properties" in schema):
        return schema
    return None


def conform(value: Any, schema: dict[str, Any] | str) -> Any:
    """Drop `null` fields that `schema` neither requires nor allows to be null; a required list
    that is `null` or absent becomes empty, a required nullable field that is absent `null`
    (in place)."""
    if isinstance(schema, str):
        schema = schemas()[schema]
    if isinstance(value, dict):
        obj = _branch(schema, "object")
        if obj is None:
            return value
        properties = obj.get("properties", {})
        required = set(obj.get("required", []))
        for key in list(value):
            sub = properties.get(key)
            if value[key] is None:
                if sub is not None and _allows_null(sub):
                    continue
                if key not in required:
                    del value[key]
                elif sub is not None and _branch(sub, "array") is not None:
                    value[key] = []  # e.g. Responses' `logprobs` when none were asked for
            elif sub is not None:
                value[key] = conform(value[key], sub)
        for key in required - set(value):  # e.g. Responses' `error`, which vLLM leaves out
            sub = properties.get(key)
            if sub is not None and _allows_null(sub):
                value[key] = None
            elif sub is not None and _branch(sub, "array") is not None:
                value[key] = []
    elif isinstance(value, list):
        array = _branch(schema, "array")
        if array is not None and isinstance(array.get("items"), dict):
            return [conform(item, array["items"]) for item in value]
    return value


def extract(openapi_path: Path) -> dict[str, Any]:
    """The ROOT_SCHEMAS of an OpenAI OpenAPI file and every schema they reference."""
    components = json.loads(openapi_path.read_text())["components"]["schemas"]
    found: dict[str, Any] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                name = ref.rsplit("/", 1)[-1]
                if name not in found:
                    found[name] = components[name]
                    walk(found[name])
            for child in node.values():
                walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    for root in ROOT_SCHEMAS:
        found[root] = components[root]
        walk(found[root])
    return dict(sorted(found.items()))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m serve_app.http.conformance path/to/openai-openapi.json")
    SCHEMAS_PATH.write_text(json.dumps(extract(Path(sys.argv[1])), indent=1) + "\n")
    print(f"wrote {SCHEMAS_PATH}")
