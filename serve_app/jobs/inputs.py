"""worker-vllm's job input (`{"input": {...}}`), validated with clear messages.

Pure pydantic: the queue validates a job before it takes a slot on an LLM replica, and the
engine validates it again when it runs (the serverless worker has no queue).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from serve_app.http.model_api import JOB_ROUTES

# Every OpenAI-shaped route of the model's API a job may wrap (those the model serves answer;
# e.g. /v1/embeddings only for a pooling model).
OPENAI_ROUTES = JOB_ROUTES


class SamplingParamsInput(BaseModel):
    """The sampling parameters of worker-vllm's README table (unset: vLLM's default)."""

    model_config = ConfigDict(extra="forbid")

    n: int | None = Field(None, ge=1)
    best_of: int | None = Field(None, ge=1)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    use_beam_search: bool | None = None
    length_penalty: float | None = None
    early_stopping: bool | Literal["never"] | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool | None = None
    max_tokens: int | None = None
    skip_special_tokens: bool | None = None
    spaces_between_special_tokens: bool | None = None
    # vLLM SamplingParams fields worker-vllm passed through as well
    seed: int | None = None
    min_tokens: int | None = None
    include_stop_str_in_output: bool | None = None

    @model_validator(mode="after")
    def _supported(self) -> SamplingParamsInput:
        if self.best_of is not None and self.best_of != (self.n or 1):
            raise ValueError(
                "best_of is not supported by vLLM 0.32 unless it equals n: use n (with "
                "use_beam_search, n is the beam width)"
            )
        if self.early_stopping not in (None, False):
            raise ValueError("early_stopping is not supported by vLLM 0.32's beam search")
        return self


class JobInput(BaseModel):
    """A job's `input`. Keys worker-vllm ignored are ignored here too."""

    model_config = ConfigDict(extra="ignore")

    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    apply_chat_template: bool = False
    sampling_params: SamplingParamsInput = Field(default_factory=SamplingParamsInput)
    stream: bool = False
    max_batch_size: int | None = Field(None, ge=1)
    min_batch_size: int | None = Field(None, ge=1)
    batch_size_growth_factor: float | None = Field(None, ge=1)
    openai_route: Literal[OPENAI_ROUTES] | None = None  # type: ignore[valid-type]
    openai_input: dict[str, Any] | None = None
    model: str | None = None  # which model (or LoRA adapter) to use; default: the only one

    @model_validator(mode="after")
    def _one_source(self) -> JobInput:
        if self.openai_route is not None:
            if self.openai_route != "/v1/models" and self.openai_input is None:
                raise ValueError(f"openai_route {self.openai_route} needs openai_input")
            return self
        if self.prompt is not None and self.messages is not None:
            raise ValueError("give either prompt or messages, not both")
        if self.prompt is None and self.messages is None:
            raise ValueError("give prompt or messages (or openai_route with openai_input)")
        if self.messages is not None and not self.messages:
            raise ValueError("messages is empty")
        return self

    @property
    def model_name(self) -> str | None:
        """The model asked for, by the job or by its wrapped OpenAI request."""
        if self.openai_input and isinstance(self.openai_input.get("model"), str):
            return self.openai_input["model"]
        return self.model


def _location(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in ("input", *loc))


def describe_errors(exc: ValidationError) -> str:
    """One line per problem, naming the field (e.g. `input.sampling_params.foo`)."""
    problems = []
    for error in exc.errors(include_url=False):
        where = _location(tuple(error.get("loc", ())))
        if error["type"] == "extra_forbidden":
            accepted = ", ".join(SamplingParamsInput.model_fields)
            problems.append(f"{where}: unknown sampling parameter (accepted: {accepted})")
        else:
            message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
            problems.append(f"{where}: {message}")
    return "; ".join(problems)


def parse_job_input(raw: Any) -> JobInput:
    """The validated input, or ValueError with a message naming every bad field."""
    if not isinstance(raw, dict):
        raise ValueError(f"input must be a JSON object, got {type(raw).__name__}")
    try:
        return JobInput.model_validate(raw)
    except ValidationError as exc:
        raise ValueError(describe_errors(exc)) from None


def request_limits(body: Any) -> dict[str, float | None]:
    """Validate a /run or /runsync body; its time limits in seconds (RunPod gives ms).

    `policy.executionTimeout` (or top-level `executionTimeout`) bounds the run once started;
    `policy.ttl` bounds the job's whole life, queue included.
    """
    if not isinstance(body, dict) or "input" not in body:
        raise ValueError('The request body must be a JSON object with an "input" field')
    policy = body.get("policy") or {}
    if not isinstance(policy, dict):
        raise ValueError("policy must be an object")
    limits: dict[str, float | None] = {}
    for name, key, value in (
        ("execution_timeout_s", "executionTimeout", policy.get("executionTimeout")),
        ("execution_timeout_s", "executionTimeout", body.get("executionTimeout")),
        ("ttl_s", "ttl", policy.get("ttl")),
    ):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ValueError(f"{key} must be a positive number of milliseconds, got {value!r}")
        limits[name] = value / 1000
    return limits


def check_encodable(body: Any) -> None:
    """ValueError if the body holds text no response could carry back (a lone surrogate,
    which JSON's \\u escapes can spell): the job would fail every later /status."""
    try:
        json.dumps(body, ensure_ascii=False).encode()
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"The request body holds text that is not valid Unicode: {exc.reason} at "
            f"character {exc.start} of its JSON"
        ) from None
