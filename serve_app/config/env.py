"""Read environment variables (and serve_config.yaml `args`) into typed, validated values.

Values come from the schema's variables only; every problem is collected, so one start-up
reports all bad variables at once (ConfigError).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, ValidationError, create_model

from serve_app.config.errors import ConfigError
from serve_app.config.schema import EnvSchema, EnvVar, load_schema

logger = logging.getLogger(__name__)

_PYTHON_TYPES: dict[str, Any] = {"str": str, "int": int, "float": float, "bool": bool, "json": Any}

_EXPECTED = {
    "int": "expected an integer",
    "float": "expected a number",
    "bool": "expected a boolean (1/0, true/false, yes/no, on/off)",
    "json": "expected JSON",
    "str": "expected a string",
}


def _strip(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


def _parse_json(value: Any) -> Any:
    if isinstance(value, str):
        return json.loads(value)
    return value


@dataclass
class EnvValues:
    """Typed values of the schema's variables for one model deployment."""

    values: dict[str, Any]
    explicitly_set: set[str] = field(default_factory=set)

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def is_set(self, name: str) -> bool:
        return name in self.explicitly_set

    def ignored(self, schema: EnvSchema) -> list[tuple[str, str]]:
        """(name, reason) of every explicitly set variable that vLLM 0.32 no longer has."""
        return [
            (name, schema.by_name[name].target.ignored or "")
            for name in sorted(self.explicitly_set)
            if schema.by_name[name].target.ignored
        ]


def _field_for(var: EnvVar) -> tuple[Any, Any]:
    annotation: Any = _PYTHON_TYPES[var.type]
    validators = [BeforeValidator(_strip)]
    if var.type == "json":
        validators.append(BeforeValidator(_parse_json))
    constraints = {"ge": var.minimum} if var.minimum is not None else {}
    annotated = Annotated[annotation | None, *validators, Field(**constraints)]
    return annotated, var.default


_MODEL_CACHE: dict[int, Any] = {}


def _settings_model(schema: EnvSchema) -> Any:
    """A pydantic model with one optional field per schema variable (built once per schema)."""
    model = _MODEL_CACHE.get(id(schema))
    if model is None:
        fields = {var.name: _field_for(var) for var in schema.variables}
        model = _MODEL_CACHE[id(schema)] = create_model("EnvSettings", **fields)
    return model


def _describe_error(var: EnvVar, raw: Any, error: dict[str, Any]) -> str:
    kind = error.get("type", "")
    if kind == "greater_than_equal":
        limit = error.get("ctx", {}).get("ge", var.minimum)
        limit = int(limit) if float(limit).is_integer() else limit
        what = f"must be at least {limit}"
    elif kind == "json_invalid" or (var.type == "json" and kind == "value_error"):
        what = f"expected JSON ({error.get('msg', '')})"
    else:
        what = _EXPECTED.get(var.type, error.get("msg", "invalid value"))
    return f"{var.name}={raw!r}: {what}"


def read_env(
    environ: Mapping[str, str],
    overrides: Mapping[str, Any] | None = None,
    *,
    schema: EnvSchema | None = None,
    choices_for: Callable[[str], list[str]] | None = None,
) -> EnvValues:
    """Validate the schema's variables from `environ`, with `overrides` taking precedence.

    Empty strings count as unset (RunPod's UI sends them for untouched fields).
    `choices_for(source)` returns the allowed values of a `choices_from` registry.
    """
    schema = schema or load_schema()
    overrides = dict(overrides or {})
    raw: dict[str, Any] = {}
    for var in schema.variables:
        value = overrides[var.name] if var.name in overrides else environ.get(var.name)
        if value is None or (isinstance(value, str) and value.strip() == ""):
            continue
        raw[var.name] = value

    problems: list[str] = []
    bad: set[str] = set()
    model = _settings_model(schema)
    try:
        parsed = model.model_validate(raw)
    except ValidationError as exc:
        for error in exc.errors():
            name = str(error["loc"][0])
            if name in bad:
                continue
            bad.add(name)
            problems.append(_describe_error(schema.by_name[name], raw.get(name), error))
        good = {k: v for k, v in raw.items() if k not in bad}
        parsed = model.model_validate(good)
    values: dict[str, Any] = parsed.model_dump()
    explicitly_set = set(raw) - bad

    for name in sorted(explicitly_set):
        var = schema.by_name[name]
        value = values[name]
        allowed: list[Any] | None = var.choices
        if var.choices_from and choices_for is not None:
            allowed = choices_for(var.choices_from)
        if allowed is not None and value not in allowed:
            shown = ", ".join(str(a) for a in allowed)
            problems.append(f"{name}={raw[name]!r}: expected one of: {shown}")

    # Aliases: worker-vllm accepted two names for some settings.
    for var in schema.variables:
        target = var.target.alias
        if not target or var.name not in explicitly_set:
            continue
        if target in explicitly_set and values[target] != values[var.name]:
            problems.append(
                f"{var.name}={raw[var.name]!r} and {target}={raw[target]!r} name the same "
                f"setting with different values: set only {target}"
            )
            continue
        values[target] = values[var.name]
        explicitly_set.add(target)

    if problems:
        raise ConfigError(problems)
    return EnvValues(values=values, explicitly_set=explicitly_set)
