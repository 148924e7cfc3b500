"""The environment-variable schema of configs/env_vars.yaml, loaded and checked."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, field_validator, model_validator

UPPER_SNAKE = re.compile(r"[A-Z][A-Z0-9_]*")
RAY_CONFIG_NAME = re.compile(r"RAY_[a-z][a-z0-9_]*")  # Ray's internal settings, as Ray spells them

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "configs" / "env_vars.yaml"

VarType = Literal["str", "int", "float", "bool", "json"]
ChoicesSource = Literal[
    "quantization_methods", "tool_parsers", "reasoning_parsers", "tokenizer_modes"
]


class Target(BaseModel):
    """Where a variable's value goes. Exactly one field is set."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vllm: str | None = None
    vllm_negated: str | None = None
    app: bool = False
    alias: str | None = None
    ignored: str | None = None
    ray: bool = False

    @model_validator(mode="before")
    @classmethod
    def _from_yaml(cls, data: Any) -> Any:
        if data in ("app", "ray"):
            return {data: True}
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> Target:
        chosen = [k for k, v in self.model_dump().items() if v]
        if len(chosen) != 1:
            raise ValueError(
                f"a target sets one of vllm/vllm_negated/app/alias/ignored/ray: {chosen}"
            )
        return self

    @property
    def vllm_dest(self) -> str | None:
        return self.vllm or self.vllm_negated


class EnvVar(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    category: str
    type: VarType
    default: Any = None
    choices: list[Any] | None = None
    choices_from: ChoicesSource | None = None
    minimum: float | None = None
    secret: bool = False
    serverless: bool = True
    target: Target
    description: str

    @field_validator("name")
    @classmethod
    def _upper_snake(cls, name: str) -> str:
        if not (UPPER_SNAKE.fullmatch(name) or RAY_CONFIG_NAME.fullmatch(name)):
            raise ValueError(f"{name!r} is not UPPER_SNAKE")
        return name

    @model_validator(mode="after")
    def _ray_config_names_are_rays(self) -> EnvVar:
        if RAY_CONFIG_NAME.fullmatch(self.name) and not self.target.ray:
            raise ValueError(f"{self.name!r}: only Ray's own settings (target ray) spell so")
        return self


class Category(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    title: str


class EnvSchema(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    categories: list[Category]
    variables: list[EnvVar]

    @model_validator(mode="after")
    def _consistent(self) -> EnvSchema:
        ids = {c.id for c in self.categories}
        names = [v.name for v in self.variables]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate variables: {duplicates}")
        for var in self.variables:
            if var.category not in ids:
                raise ValueError(f"{var.name}: unknown category {var.category!r}")
            if var.target.alias and var.target.alias not in names:
                raise ValueError(f"{var.name}: alias of unknown variable {var.target.alias}")
        return self

    @functools.cached_property
    def by_name(self) -> dict[str, EnvVar]:
        return {v.name: v for v in self.variables}

    def in_category(self, category_id: str) -> list[EnvVar]:
        return [v for v in self.variables if v.category == category_id]


@functools.cache
def load_schema(path: Path = SCHEMA_PATH) -> EnvSchema:
    with open(path, encoding="utf-8") as f:
        return EnvSchema.model_validate(yaml.safe_load(f))
