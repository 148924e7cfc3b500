"""A RunPod job run on one LLM replica (or the serverless worker), through its model API.

A job takes a generation slot first (without `wait`, a replica with none free answers
ReplicaBusy and the job queue offers the job again); then its OpenAI request, built from
worker-vllm's input (translate.py) or given whole (`openai_route` + `openai_input`), runs
through the replica's model API in this process (http/model_api.py, http/asgi.py), exactly
as the same request over HTTP would, and the answer becomes worker-vllm's output items.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from serve_app.config.plan import JobOutputOptions
from serve_app.http import asgi
from serve_app.http.admission import GenerationSlots, Overloaded
from serve_app.http.asgi import ASGIApp
from serve_app.http.model_api import route_for
from serve_app.jobs import translate
from serve_app.jobs.inputs import JobInput, parse_job_input
from serve_app.jobs.translate import JobFailed, JobStarted, OpenAIError, ReplicaBusy

PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}


class JobRunner:
    def __init__(
        self,
        api: ASGIApp,
        slots: GenerationSlots,
        served_model_name: str,
        options: JobOutputOptions,
        replica: str,
    ):
        self._api = api
        self._slots = slots
        self._model = served_model_name
        self._options = options
        self._replica = replica

    async def run(self, job_input: Any, wait: bool = True) -> AsyncIterator[Any]:
        """JobStarted, then worker-vllm's output items; JobFailed if the job fails; only
        ReplicaBusy if `wait` is off and no generation slot is free."""
        try:
            job = parse_job_input(job_input)
        except ValueError as exc:
            yield JobFailed(str(exc))
            return
        try:
            if job.openai_route and not route_for(job.openai_route).generates:
                yield JobStarted(replica=self._replica)  # no generation: no slot needed
                async with contextlib.aclosing(self._openai_job(job)) as items:
                    async for item in items:
                        yield item
                return
            async with self._slots.slot(wait=wait):
                yield JobStarted(replica=self._replica)
                run = self._openai_job(job) if job.openai_route else self._standard_job(job)
                async with contextlib.aclosing(run) as items:
                    async for item in items:
                        yield item
        except Overloaded:
            yield ReplicaBusy()
        except OpenAIError as exc:
            yield JobFailed(str(exc), {"error": exc.error})

    async def _request(
        self, path: str, body: dict[str, Any] | None
    ) -> tuple[Any, AsyncGenerator[str] | None]:
        """Run an OpenAI request: (the response, None), or (None, its SSE chunks). The job holds
        its generation slot already."""
        if body is None:
            request = asgi.HttpRequest("GET", path)
        else:
            request = asgi.HttpRequest.json(path, json.dumps(body).encode())
        answer = asgi.call(self._api, request, **{asgi.ADMITTED: True})
        start = await anext(answer)
        assert isinstance(start, asgi.HttpStart)
        if start.is_stream and start.status == 200:
            return None, _text(answer)
        raw = b"".join([chunk async for chunk in answer])  # type: ignore[misc]
        try:
            response = json.loads(raw)
        except ValueError:
            response = {"error": {"message": raw.decode(errors="replace")}}
        if start.status != 200:
            raise OpenAIError(response.get("error", response))
        return response, None

    async def _standard_job(self, job: JobInput) -> AsyncIterator[Any]:
        route, body = translate.openai_request(job, self._model)
        response, stream = await self._request(PATHS[route], body)
        if stream is None:
            yield translate.completed_item(response, route)
            return
        sizes = translate.batch_sizes(job, self._options.streaming)
        n = job.sampling_params.n or 1
        try:
            async for item in translate.stream_items(stream, route, sizes, n):
                yield item
        finally:
            await stream.aclose()  # a job ended early: its request ends in the engine

    async def _openai_job(self, job: JobInput) -> AsyncIterator[Any]:
        assert job.openai_route is not None
        body = None
        if route_for(job.openai_route).generates:
            body = {"model": self._model, **(job.openai_input or {})}
        response, stream = await self._request(job.openai_route, body)
        if stream is None:
            yield response
            return
        sizes = translate.batch_sizes(job, self._options.streaming)
        raw = self._options.raw_openai_output
        try:
            async for batch in translate.openai_stream_items(stream, sizes, raw=raw):
                yield batch
        finally:
            await stream.aclose()  # a job ended early: its request ends in the engine


async def _text(chunks: Any) -> AsyncGenerator[str]:
    """The chunks as text; closing this closes them (which aborts the request)."""
    try:
        async for chunk in chunks:
            yield chunk.decode()
    finally:
        await chunks.aclose()
