"""Jobs through the OpenAI path: worker-vllm's job input as an OpenAI request, and the OpenAI
answer back as worker-vllm's job outputs.

A standard job (`prompt` or `messages`) becomes a completions or chat request, so chat
templates, validation, LoRA selection and sampling are vLLM's own, as for the OpenAI routes.
Its outputs are worker-vllm's items, `{"choices": [{"tokens": [...]}], "usage": {"input": N,
"output": M}}`, streamed in batches of growing size (1, 3, 9, 27, 50, 50, ... by default).
An OpenAI-wrapped job (`openai_route`) returns the OpenAI answer itself: raw SSE strings
(RAW_OPENAI_OUTPUT=1) or parsed chunk objects, batched the same way.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

from serve_app.config.plan import StreamingBatchSizes
from serve_app.jobs.inputs import JobInput

# worker-vllm's vLLM SamplingParams default: jobs that do not say generate 16 tokens.
DEFAULT_MAX_TOKENS = 16


@dataclass(frozen=True)
class JobStarted:
    """First item of a running job: it left the queue and runs on `replica`."""

    replica: str


@dataclass(frozen=True)
class ReplicaBusy:
    """Only item of a job the replica could not take (its waiting line is full): the job
    stays IN_QUEUE and the queue offers it again."""


@dataclass(frozen=True)
class JobFailed:
    """Last item of a failed job: the reason, and the OpenAI error body if there is one."""

    error: str
    output: Any = None


def batch_sizes(job: JobInput, defaults: StreamingBatchSizes) -> Iterator[int]:
    """worker-vllm's growing stream batches: min, min*growth, ... capped at max."""
    maximum = job.max_batch_size or defaults.max_batch_size
    current = float(min(job.min_batch_size or defaults.min_batch_size, maximum))
    growth = job.batch_size_growth_factor or defaults.growth_factor
    while True:
        yield max(1, int(current))
        current = min(current * growth, maximum)


def openai_request(job: JobInput, model: str) -> tuple[str, dict[str, Any]]:
    """(route, body) of the OpenAI request that runs a standard job."""
    sampling = job.sampling_params.model_dump(exclude_none=True, exclude={"best_of"})
    sampling.pop("early_stopping", None)
    sampling.setdefault("max_tokens", DEFAULT_MAX_TOKENS)
    body: dict[str, Any] = {"model": job.model or model, **sampling}
    if job.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
    if job.messages is not None or job.apply_chat_template:
        messages = job.messages or [{"role": "user", "content": job.prompt}]
        return "chat", {**body, "messages": messages}
    return "completions", {**body, "prompt": job.prompt}


def _item(texts: list[list[str]], usage: dict[str, int]) -> dict[str, Any]:
    return {"choices": [{"tokens": tokens} for tokens in texts], "usage": usage}


def completed_item(response: dict[str, Any], route: str) -> dict[str, Any]:
    """The one output item of a non-streaming job, from the OpenAI response."""
    n = max((c["index"] for c in response["choices"]), default=-1) + 1
    texts: list[list[str]] = [[] for _ in range(n)]
    for choice in response["choices"]:
        text = choice["message"].get("content") if route == "chat" else choice.get("text")
        texts[choice["index"]] = [text or ""]
    usage = response.get("usage") or {}
    return _item(
        texts, {"input": usage.get("prompt_tokens", 0), "output": usage.get("completion_tokens", 0)}
    )


async def stream_items(
    chunks: AsyncIterator[str], route: str, sizes: Iterator[int], n: int = 1
) -> AsyncIterator[dict[str, Any]]:
    """worker-vllm's batched items (each with all `n` choices) from vLLM's SSE chunks.

    A batch closes when it holds as many tokens as the current batch size. vLLM sends one
    chunk per generated token and choice, but none for a token whose text is not whole yet
    (part of a multi-byte character): its text comes with the next token's. worker-vllm gave
    such a token an empty string, and so does this, as vLLM's continuous usage stats count the
    tokens (with one choice; with several, the count is theirs together). Usage comes from
    those stats too.
    """
    size = next(sizes)
    texts: list[list[str]] = [[] for _ in range(n)]
    in_batch = 0
    sent = False
    counted = 0  # tokens seen, by the usage stats
    usage = {"input": 0, "output": 0}
    async for event in _events(chunks):
        if "error" in event:
            raise OpenAIError(event["error"])
        generated = counted
        if event.get("usage"):
            usage = {
                "input": event["usage"].get("prompt_tokens", 0),
                "output": event["usage"].get("completion_tokens", 0),
            }
            generated = usage["output"]
        for choice in event.get("choices") or []:
            if route == "chat":
                delta = choice.get("delta") or {}
                if "role" in delta:
                    continue  # the role announcement, not a token
                text = delta.get("content") or ""
            else:
                text = choice.get("text") or ""
            tokens = [text]
            if n == 1:
                tokens = [""] * max(0, generated - counted - 1) + tokens
                counted = max(generated, counted + 1)
            for token in tokens:
                texts[choice["index"]].append(token)
                in_batch += 1
                if in_batch >= size and n == 1:
                    yield _item(texts, dict(usage))
                    texts, in_batch, size, sent = [[]], 0, next(sizes), True
        if in_batch >= size:
            yield _item(texts, dict(usage))
            texts, in_batch, size, sent = [[] for _ in texts], 0, next(sizes), True
    if in_batch or not sent:
        yield _item(texts, usage)


class OpenAIError(Exception):
    """The OpenAI request of a job failed; `error` is OpenAI's error object."""

    def __init__(self, error: dict[str, Any]):
        self.error = error
        super().__init__(str(error.get("message", error)))


async def _events(chunks: AsyncIterator[str]) -> AsyncIterator[dict[str, Any]]:
    async for chunk in chunks:
        for line in chunk.split("\n"):  # not splitlines: text may hold U+2028 and kin
            if line.startswith("data: ") and line != "data: [DONE]":
                yield json.loads(line.removeprefix("data: "))


async def openai_stream_items(
    chunks: AsyncIterator[str], sizes: Iterator[int], *, raw: bool
) -> AsyncIterator[str | list[dict[str, Any]]]:
    """Batches of vLLM's SSE events of an OpenAI-wrapped job, as worker-vllm streams them:
    raw SSE text (each batch one string) or the parsed `data` objects (each batch a list).
    Events may carry an `event:` line (the Responses API's do): raw batches keep it."""
    size = next(sizes)
    batch: list[Any] = []
    async for chunk in chunks:
        for event in chunk.split("\n\n"):
            data = next((line[6:] for line in event.split("\n") if line.startswith("data: ")), None)
            if data is None:
                continue
            if raw:
                batch.append(event + "\n\n")
            elif data != "[DONE]":
                batch.append(json.loads(data))
            else:
                continue
            if len(batch) >= size:
                yield "".join(batch) if raw else batch
                batch, size = [], next(sizes)
    if batch:
        yield "".join(batch) if raw else batch
