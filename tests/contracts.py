"""Validate documents against OpenAI's published schemas (the subset in serve_app/)."""

from __future__ import annotations

import copy
import functools
from typing import Any

import jsonschema

from serve_app.http.conformance import schemas


def _nullable_to_json_schema(node: Any) -> Any:
    """OpenAPI 3.0's `nullable: true` as JSON Schema (`anyOf [..., null]`)."""
    if isinstance(node, list):
        return [_nullable_to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: _nullable_to_json_schema(v) for k, v in node.items()}
    if node.pop("nullable", False):
        return {"anyOf": [node, {"type": "null"}]}
    return node


@functools.cache
def _validator(name: str) -> jsonschema.Draft202012Validator:
    converted = _nullable_to_json_schema(copy.deepcopy(schemas()))
    root = {"$ref": f"#/components/schemas/{name}", "components": {"schemas": converted}}
    return jsonschema.Draft202012Validator(root)


def validate(name: str, document: dict) -> None:
    """Raise jsonschema.ValidationError unless `document` conforms to schema `name`."""
    _validator(name).validate(document)


def errors(name: str, document: dict) -> list[jsonschema.ValidationError]:
    return list(_validator(name).iter_errors(document))
