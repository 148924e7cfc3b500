"""One vLLM engine (AsyncLLM) with vLLM's own OpenAI serving objects.

The OpenAI layer is vLLM's own: the engine builds vLLM's serving objects (chat, completions,
models; chat templates, tool and reasoning parsers, structured outputs, LoRA) exactly as
`vllm serve` does, from the same arguments, and calls them directly. Answers leave already
serialized: a head `(status, is_stream)`, then the JSON body, or the SSE text chunks exactly as
vLLM produced them. RunPod jobs go through the same path (serve_app/jobs/translate.py).

Used by the LLM deployment (serve_app/llm_server.py) and by the RunPod serverless worker.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from pydantic import ValidationError

from . import openai_errors
from .admission import GenerationSlots, Overloaded
from .config import vllm_args
from .config.plan import ModelDeployment
from .jobs import translate
from .jobs.inputs import JobInput, parse_job_input
from .jobs.translate import JobFailed, JobStarted, OpenAIError, ReplicaBusy
from .logs import get_logger
from .model_files import resolve_model
from .openai_conformance import conform
from .placement import cpu_thread_binding
from .streams import coalesce

logger = get_logger(__name__)

# What `openai` yields first: (HTTP status, whether SSE chunks follow).
Head = tuple[int, bool]

ROUTES = ("chat", "completions")


def _metrics_loggers(disabled: bool) -> list[Any] | None:
    """In a Ray cluster, vLLM's Prometheus metrics also go to Ray's metrics, so every node's
    metrics endpoint (and the Ray dashboard's Grafana) shows them with Serve's own; copied
    there periodically, off the token path (serve_app/engine_metrics.py)."""
    import ray

    if disabled or not ray.is_initialized():
        return None  # the serverless worker keeps vLLM's default loggers
    from .engine_metrics import RayExportedStatLogger

    return [RayExportedStatLogger]


def _bind_cpu_workers(world_size: int) -> None:
    """On CPU with several workers, give each its share of this process's cores.

    vLLM's automatic binding assigns one NUMA node per worker and fails where there are fewer
    nodes than workers; an explicit VLLM_CPU_OMP_THREADS_BIND is left alone.
    """
    from vllm.platforms import current_platform

    if world_size < 2 or not current_platform.is_cpu():
        return
    if os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto") != "auto":
        return
    binding = cpu_thread_binding(os.sched_getaffinity(0), world_size)
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = binding
    logger.info("CPU workers bound to cores %s", binding)


def _use_replica_placement_group(vllm_config: Any) -> None:
    """vLLM's Ray executor must run its workers in this replica's placement group (Serve
    reserved it from PLACEMENT bundles), not create a second one. The engine core runs in a
    child process, where Ray's "current placement group" is unknown, so it is passed along."""
    parallel = vllm_config.parallel_config
    if parallel.distributed_executor_backend != "ray" or parallel.placement_group is not None:
        return
    from ray.util import get_current_placement_group

    group = get_current_placement_group()
    if group is not None:
        parallel.placement_group = group
        logger.info("engine workers use the replica's placement group %s", group.id.hex())


def freeze_startup_heap() -> None:
    """What `vllm serve` does once its engine is up: collect, then move every object alive now
    (vLLM, torch, transformers: ~700k objects) out of the garbage collector's reach.

    Without it, each full collection while serving scans them all (0.4 s on a 2-core machine)
    and the process streams nothing meanwhile. Objects made from now on (requests, streams)
    are collected as usual. Serve does the same for its replicas once they are initialized
    (RAY_SERVE_FREEZE_GC_ON_STARTUP, on by default); the serverless worker calls this."""
    from vllm.utils.gc_utils import freeze_gc_heap

    started = time.monotonic()
    freeze_gc_heap()
    logger.info(
        "%d start-up objects frozen out of garbage collection in %.2f s",
        gc.get_freeze_count(),
        time.monotonic() - started,
    )


def replica_id() -> str:
    try:
        from ray import serve

        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # not in a Serve replica (the RunPod serverless worker)
        return "worker"


_RESPONSE_SCHEMAS = {
    "chat": "CreateChatCompletionResponse",
    "completions": "CreateCompletionResponse",
}
_ERROR_PREFIX = 'data: {"error"'


class LLMEngine:
    """One vLLM engine and vLLM's OpenAI serving objects for it. Create with `start`."""

    def __init__(self, model: ModelDeployment, engine: Any, state: Any):
        self.model = model
        self._engine = engine
        self._handlers = {
            "chat": state.openai_serving_chat.create_chat_completion,
            "completions": state.openai_serving_completion.create_completion,
        }
        self._models = state.openai_serving_models
        self._slots = GenerationSlots(model.serve.max_concurrency, model.serve.max_queued_requests)
        self._stats_task = (
            asyncio.get_running_loop().create_task(self._log_stats_periodically())
            if getattr(engine, "log_stats", False)
            else None
        )

    async def _log_stats_periodically(self) -> None:
        """What `vllm serve` does: every VLLM_LOG_STATS_INTERVAL seconds, vLLM's stat loggers
        log (its throughput and cache line) and export (in a Ray cluster, the copy of its
        metrics into Ray's)."""
        from vllm import envs

        while self._engine is not None:
            await asyncio.sleep(envs.VLLM_LOG_STATS_INTERVAL)
            try:
                await self._engine.do_log_stats()
            except Exception:  # a failed copy of the metrics must not end the loop
                logger.exception("vLLM's periodic stats failed")

    @classmethod
    async def start(cls, model: ModelDeployment) -> LLMEngine:
        return cls(model, *await cls.boot(model))

    @classmethod
    async def boot(cls, model: ModelDeployment) -> tuple[Any, Any]:
        """Fetch the model's files and start the engine (the slow part of a replica start)."""
        started = time.monotonic()
        args = await asyncio.to_thread(cls._resolve_args, model)
        engine, state = await cls._start_engine(args)
        logger.info(
            "engine ready in %.0f s: %s as %s",
            time.monotonic() - started,
            model.model_name,
            ", ".join(model.model_names),
        )
        return engine, state

    @staticmethod
    def _resolve_args(model: ModelDeployment) -> Any:
        """vLLM's serve Namespace, with the model (and tokenizer) as local directories."""
        options = dict(model.vllm_args)
        storage = model.storage.model_dump()
        path = resolve_model(model.model_name, revision=options.pop("revision", None), **storage)
        options["model"] = str(path)
        if options.get("tokenizer"):
            revision = options.pop("tokenizer_revision", None)
            tokenizer = resolve_model(
                options["tokenizer"], revision=revision, tokenizer_only=True, **storage
            )
            options["tokenizer"] = str(tokenizer)
        return vllm_args.parse_argv(vllm_args.to_argv(options))

    @staticmethod
    async def _start_engine(args: Any) -> tuple[Any, Any]:
        from starlette.datastructures import State
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.entrypoints.launchers.api_server.app_state import init_app_state
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        engine_args = AsyncEngineArgs.from_cli_args(args)
        usage = UsageContext.OPENAI_API_SERVER
        _bind_cpu_workers(args.tensor_parallel_size * args.pipeline_parallel_size)
        vllm_config = engine_args.create_engine_config(usage_context=usage)
        _use_replica_placement_group(vllm_config)
        engine = AsyncLLM.from_vllm_config(
            vllm_config=vllm_config,
            usage_context=usage,
            enable_log_requests=engine_args.enable_log_requests,
            aggregate_engine_logging=engine_args.aggregate_engine_logging,
            disable_log_stats=engine_args.disable_log_stats,
            stat_loggers=_metrics_loggers(engine_args.disable_log_stats),
        )
        try:
            state = State()
            await init_app_state(engine, state, args, await engine.get_supported_tasks())
        except BaseException:
            engine.shutdown()
            raise
        return engine, state

    async def openai(self, route: str, body: bytes) -> AsyncIterator[Head | bytes | str]:
        """Serve one OpenAI request. Yields the head, then the body or the SSE chunks.

        A valid request waits for a generation slot first (serve_app/admission.py), or gets
        503 at once when this replica's waiting line is full; bad input is answered at once."""
        request = self._parse(route, body)
        if isinstance(request, bytes):
            yield 400, False
            yield request
            return
        try:
            async with self._slots.slot():
                async for item in self._answer(route, request):
                    yield item
        except Overloaded as exc:
            yield 503, False
            yield openai_errors.error_body(503, f"Overloaded, retry shortly: {exc}")

    def _parse(self, route: str, body: bytes) -> Any:
        """vLLM's request object for `body`, or the body of a 400 answer naming the problem."""
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
        from vllm.entrypoints.openai.completion.protocol import CompletionRequest

        request_type = ChatCompletionRequest if route == "chat" else CompletionRequest
        try:
            request = request_type.model_validate_json(body)
        except ValidationError as exc:
            message, param = _describe_validation_error(exc)
            return openai_errors.error_body(400, message, param=param)
        except Exception as exc:  # vLLM's own validators can fail on malformed input
            return openai_errors.error_body(400, f"Invalid request: {type(exc).__name__}: {exc}")
        if route == "chat" and (problem := _unknown_role(request.messages)):
            return openai_errors.error_body(400, problem, param="messages")
        return request

    async def _answer(self, route: str, request: Any) -> AsyncIterator[Head | bytes | str]:
        """Run a parsed request in the engine through vLLM's serving object for `route`."""
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse

        try:
            result = await self._handlers[route](request, None)
        except Exception as exc:  # vLLM raises for some bad requests (e.g. too long prompt)
            status, error = self._error_from_exception(exc)
            yield status, False
            yield json.dumps(error).encode()
            return

        if isinstance(result, ErrorResponse):
            status, error = openai_errors.normalize_error(result.model_dump())
            yield status, False
            yield json.dumps(error).encode()
        elif hasattr(result, "model_dump"):
            yield 200, False
            response = conform(result.model_dump(mode="json"), _RESPONSE_SCHEMAS[route])
            yield json.dumps(response).encode()
        else:
            yield 200, True
            async for chunk in result:
                if chunk.startswith(_ERROR_PREFIX):
                    chunk = _conform_error_chunk(chunk)
                yield chunk

    async def openai_coalesced(self, route: str, body: bytes) -> AsyncIterator[Head | bytes | str]:
        """`openai` for a caller in another process (the router ingress): SSE chunks produced
        while the previous message was on its way travel together (streams.coalesce)."""
        answer = self.openai(route, body)
        head = await anext(answer)
        yield head
        if head[1]:
            async for joined in coalesce(answer):
                yield joined
        else:
            yield await anext(answer)

    def _error_from_exception(self, exc: Exception) -> tuple[int, dict[str, Any]]:
        from vllm.entrypoints.serve.exception_handling.error_response import (
            create_error_response,
        )
        from vllm.v1.engine.exceptions import EngineDeadError

        if isinstance(exc, EngineDeadError):
            return 503, openai_errors.error_dict(
                503,
                "The engine of this replica has died; Serve is replacing the replica. Retry.",
            )
        error = create_error_response(exc)
        if error.error.code >= 500:
            logger.exception("request failed: %s", exc)
        return openai_errors.normalize_error(error.model_dump())

    async def job(self, job_input: dict[str, Any], wait: bool = True) -> AsyncIterator[Any]:
        """A RunPod job: JobStarted, then worker-vllm's output items; JobFailed if it fails.

        Without `wait`, a job that finds no free generation slot yields only ReplicaBusy."""
        try:
            job = parse_job_input(job_input)
        except ValueError as exc:
            yield JobFailed(str(exc))
            return
        if job.openai_route == "/v1/models":  # no generation: no slot needed
            yield JobStarted(replica=replica_id())
            yield await self.models()
            return
        try:
            async with self._slots.slot(wait=wait):
                yield JobStarted(replica=replica_id())
                items = self._openai_job(job) if job.openai_route else self._standard_job(job)
                async for item in items:
                    yield item
        except Overloaded:
            yield ReplicaBusy()
        except OpenAIError as exc:
            yield JobFailed(str(exc), {"error": exc.error})

    async def _request(self, route: str, body: dict[str, Any]) -> tuple[Any, AsyncIterator[str]]:
        """Run an OpenAI request: (the response, None), or (None, its SSE chunks). The job
        holds the generation slot already."""
        request = self._parse(route, json.dumps(body).encode())
        if isinstance(request, bytes):
            raise OpenAIError(json.loads(request)["error"])
        stream = self._answer(route, request)
        status, is_stream = await anext(stream)
        if is_stream:
            return None, stream
        response = json.loads(await anext(stream))
        if status != 200:
            raise OpenAIError(response["error"])
        return response, None

    async def _standard_job(self, job: JobInput) -> AsyncIterator[Any]:
        route, body = translate.openai_request(job, self.model.served_model_names[0])
        response, stream = await self._request(route, body)
        if stream is None:
            yield translate.completed_item(response, route)
            return
        sizes = translate.batch_sizes(job, self.model.jobs.streaming)
        n = job.sampling_params.n or 1
        async for item in translate.stream_items(stream, route, sizes, n):
            yield item

    async def _openai_job(self, job: JobInput) -> AsyncIterator[Any]:
        route = "chat" if job.openai_route == "/v1/chat/completions" else "completions"
        body = {"model": self.model.served_model_names[0], **(job.openai_input or {})}
        response, stream = await self._request(route, body)
        if stream is None:
            yield response
            return
        sizes = translate.batch_sizes(job, self.model.jobs.streaming)
        raw = self.model.jobs.raw_openai_output
        async for batch in translate.openai_stream_items(stream, sizes, raw=raw):
            yield batch

    async def models(self) -> dict[str, Any]:
        """vLLM's /v1/models list for this deployment (base model and LoRA adapters)."""
        listing = await self._models.show_available_models()
        return conform(listing.model_dump(mode="json"), "ListModelsResponse")

    async def stats(self) -> dict[str, Any]:
        """This replica's process and the requests its engine is working on (running or queued)."""
        return {
            "pid": os.getpid(),
            "gc_frozen_objects": gc.get_freeze_count(),
            "unfinished_requests": self._engine.get_num_unfinished_requests(),
            "running": self._slots.running,
            "waiting": self._slots.waiting,
        }

    async def check_health(self) -> None:
        """Raises if the engine is dead."""
        await self._engine.check_health()

    def shutdown(self) -> None:
        task, self._stats_task = getattr(self, "_stats_task", None), None
        if task is not None:
            task.cancel()
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.shutdown()


# OpenAI's message roles. vLLM would pass any other role to the chat template, which most
# templates render as if it were valid, so a typo'd role silently changes the prompt.
CHAT_ROLES = ("system", "developer", "user", "assistant", "tool", "function")


def _unknown_role(messages: list[Any]) -> str | None:
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in CHAT_ROLES:
            return (
                f"messages[{index}].role: {role!r} is not a valid role; expected one of "
                + ", ".join(CHAT_ROLES)
            )
    return None


def _describe_validation_error(exc: ValidationError) -> tuple[str, str | None]:
    """A message naming every bad field (bounded), and the first one as `param`."""
    from vllm.entrypoints.serve.exception_handling.handlers.validation import (
        clean_loc_for_param,
    )

    errors = exc.errors(include_url=False, include_input=False)
    whole = [e for e in errors if not e.get("loc")]  # about the body itself, not a field
    if whole and whole[0].get("type") == "json_invalid":
        detail = str(whole[0].get("msg", "")).removeprefix("Invalid JSON: ")
        return f"The request body is not valid JSON: {detail}", None
    if whole and whole[0].get("type") in ("model_type", "dict_type"):
        return "The request body must be a JSON object", None
    parts, param = [], None
    for error in errors[:10]:
        loc = clean_loc_for_param(tuple(error.get("loc", ())))
        param = param or loc or None
        message = str(error.get("msg", "invalid value"))
        if "ctx" in error and isinstance(error["ctx"].get("error"), Exception):
            message = str(error["ctx"]["error"])
        parts.append(f"{loc}: {message}" if loc else message)
    more = f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""
    return "Invalid request: " + "; ".join(parts) + more, param


def _conform_error_chunk(chunk: str) -> str:
    """vLLM's in-stream error event, with OpenAI's error shape (string `code`)."""
    payload = chunk.removeprefix("data: ").strip()
    try:
        _, error = openai_errors.normalize_error(json.loads(payload))
    except (ValueError, AttributeError):
        return chunk
    return f"data: {json.dumps(error)}\n\n"
