"""One vLLM engine (AsyncLLM) and vLLM's own HTTP API for it, built as `vllm serve` builds them.

`start` resolves the model's files, parses the `vllm serve` arguments the plan derived, starts
the engine, and builds vLLM's FastAPI app with `build_app` (every router `vllm serve` registers
for the model's tasks) on the state `init_app_state` fills: chat templates, tool and reasoning
parsers, structured outputs, LoRA, Responses, Anthropic messages, tokenization and, for pooling
models, embeddings, scores and rerank are all vLLM's. While the engine runs, vLLM's stat loggers
log and export every VLLM_LOG_STATS_INTERVAL seconds, as `vllm serve`'s lifespan has them do.

Two of vLLM's exception handlers are replaced: request validation and HTTP errors (404, 405,
413) answer with messages that name the field or route, in OpenAI's shape, as the rest of this
application does (http/model_api.py gives every error its protocol's shape).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import time
from pathlib import Path
from typing import Any

from serve_app.config.placement import cpu_thread_binding
from serve_app.config.plan import ModelDeployment
from serve_app.engine import args as vllm_args
from serve_app.engine import compat, tool_parsers
from serve_app.engine.model_files import resolve_model
from serve_app.http.errors import error_dict, http_error_message
from serve_app.logs import get_logger

logger = get_logger(__name__)

# How long a stopping engine's processes get to exit before they are killed (vLLM waits 5 s).
# Their own teardown takes well under a second; the rest is the interpreter's exit of a heap
# the size of torch and vLLM, which a process about to vanish need not free, and a replica
# that stops (scale-in, redeploy, replacement) waits for it.
EXIT_GRACE_S = 1.0


def _metrics_loggers(disabled: bool) -> list[Any] | None:
    """In a Ray cluster, vLLM's Prometheus metrics also go to Ray's metrics, so every node's
    metrics endpoint (and the Ray dashboard's Grafana) shows them with Serve's own; copied
    there periodically, off the token path (metrics.py)."""
    import ray

    if disabled or not ray.is_initialized():
        return None  # the serverless worker keeps vLLM's default loggers
    from serve_app.engine.metrics import RayExportedStatLogger

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


def _choose_tool_parser(options: dict[str, Any]) -> None:
    """Tool calls on and TOOL_CALL_PARSER unset: the parser that fits the model's chat template
    (tool_parsers.py), with vLLM's auto tool choice, which its parser needs."""
    from vllm.tool_parsers import ToolParserManager

    model_dir = Path(options.get("tokenizer") or options["model"])
    template = tool_parsers.read_chat_template(model_dir, options.get("chat_template"))
    parser, why = tool_parsers.choose(template, ToolParserManager.list_registered())
    if parser is None:
        logger.warning("TOOL_CALL_PARSER unset and none chosen (%s): tool calls refused", why)
        return
    options["tool_call_parser"] = parser
    options["enable_auto_tool_choice"] = True
    logger.info(
        "TOOL_CALL_PARSER unset: %r (%s), so tool calls work (auto, required or a named "
        "function); set TOOL_CALL_PARSER to choose another",
        parser,
        why,
    )


def engine_options(model: ModelDeployment) -> dict[str, Any]:
    """The `vllm serve` arguments {dest: value} a replica starts its engine with: the plan's,
    with the model (and tokenizer) as local directories and the tool parser chosen."""
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
    if model.choose_tool_parser:
        _choose_tool_parser(options)
    return options


def resolve_args(model: ModelDeployment) -> Any:
    """vLLM's serve Namespace for the model's engine (`engine_options`, parsed)."""
    return vllm_args.parse_argv(vllm_args.to_argv(engine_options(model)))


class _NoServer:
    """Stands in for the uvicorn server vLLM's engine-error handler would stop: here Serve's
    health check replaces a replica whose engine died."""

    should_exit = False


class StallWatch:
    """Notices an engine that has requests but finishes no step for `timeout_s` (its engine
    core hung: stopped, deadlocked, a stuck device) and kills its engine core, so that the
    engine is dead the way vLLM reports it: its streams end with an error event and the
    health check fails, and Serve replaces the replica. vLLM's own check_health only reads
    an error flag that a hung process never sets.

    The step clock: each EngineCoreOutputs the AsyncLLM pulls from its engine core (one
    call per step, not per token) stamps the time.
    """

    def __init__(self, engine: Any, timeout_s: float):
        self._engine = engine
        self._timeout_s = timeout_s
        self.last_step = time.monotonic()
        self.stalled = False  # set once it stopped the engine core: the engine is not healthy
        core = engine.engine_core
        pull = core.get_output_async

        async def stamped() -> Any:
            outputs = await pull()
            self.last_step = time.monotonic()
            return outputs

        core.get_output_async = stamped
        self.task = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        interval = min(5.0, self._timeout_s / 4)
        try:
            while not self._engine.errored:
                await asyncio.sleep(interval)
                now = time.monotonic()
                if not self._engine.get_num_unfinished_requests():
                    self.last_step = now  # idle is not hung
                    continue
                if now - self.last_step > self._timeout_s:
                    self.stalled = True
                    self._stop_engine_core(now - self.last_step)
                    return
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("the engine stall watch failed; the replica reports unhealthy")
            self.stalled = True

    def _stop_engine_core(self, stalled_s: float) -> None:
        import psutil

        cores = [
            p
            for p in psutil.Process().children()
            if "EngineCore" in " ".join(_cmdline(p)) or "EngineCore" in _name(p)
        ]
        logger.error(
            "the engine made no step for %.0f s with %d requests (ENGINE_STALL_TIMEOUT_S=%g): "
            "stopping its engine core (pid %s) so Serve replaces this replica",
            stalled_s,
            self._engine.get_num_unfinished_requests(),
            self._timeout_s,
            ", ".join(str(p.pid) for p in cores) or "not found",
        )
        for process in cores:
            with contextlib.suppress(psutil.Error):
                process.kill()


def _cmdline(process: Any) -> list[str]:
    try:
        return process.cmdline()
    except Exception:
        return []


def _name(process: Any) -> str:
    try:
        return process.name()
    except Exception:
        return ""


class VLLMEngine:
    """One AsyncLLM and vLLM's FastAPI app for it (an `engine.protocol.Engine`)."""

    def __init__(
        self, engine: Any, app: Any, tasks: tuple[str, ...], stall_timeout_s: float | None = None
    ):
        self._engine = engine
        self._app = app
        self._tasks = tasks
        self._stall_watch = StallWatch(engine, stall_timeout_s) if stall_timeout_s else None
        self._stats_task = (
            asyncio.get_running_loop().create_task(self._log_stats_periodically())
            if getattr(engine, "log_stats", False)
            else None
        )

    @property
    def app(self) -> Any:
        return self._answer

    async def _answer(self, scope: Any, receive: Any, send: Any) -> None:
        """vLLM's app, but a dead engine answers 503 at once (vLLM's handlers would answer
        500): Serve's health check is replacing this replica, and the client should retry."""
        engine = self._engine
        if scope["type"] == "http" and (engine is None or engine.errored or self._stalled()):
            from starlette.responses import JSONResponse

            message = "The engine of this replica has died; Serve is replacing the replica. Retry."
            await JSONResponse(error_dict(503, message), status_code=503)(scope, receive, send)
            return
        await self._app(scope, receive, send)

    @property
    def supported_tasks(self) -> tuple[str, ...]:
        return self._tasks

    def openapi(self) -> dict[str, Any]:
        return self._app.openapi()

    async def check_health(self) -> None:
        if self._stalled():
            raise RuntimeError(
                "the engine made no step for ENGINE_STALL_TIMEOUT_S with requests waiting"
            )
        await self._engine.check_health()

    def _stalled(self) -> bool:
        return self._stall_watch is not None and self._stall_watch.stalled

    def unfinished_requests(self) -> int:
        return self._engine.get_num_unfinished_requests()

    def prefix_cache(self) -> dict[str, int]:
        from serve_app.engine.metrics import prefix_cache_counts

        return prefix_cache_counts()

    @property
    def kv_cache_tokens(self) -> int:
        # The engine core reports its blocks at start-up into the front end's cache config.
        cache = self._engine.vllm_config.cache_config
        return int(cache.num_gpu_blocks or 0) * int(cache.block_size or 0)

    async def _log_stats_periodically(self) -> None:
        """What `vllm serve`'s lifespan does: every VLLM_LOG_STATS_INTERVAL seconds, vLLM's stat
        loggers log (its throughput and cache line) and export (in a Ray cluster, the copy of
        its metrics into Ray's)."""
        from vllm import envs

        while self._engine is not None:
            await asyncio.sleep(envs.VLLM_LOG_STATS_INTERVAL)
            try:
                await self._engine.do_log_stats()
            except Exception:  # a failed copy of the metrics must not end the loop
                logger.exception("vLLM's periodic stats failed")

    def shutdown(self) -> None:
        task, self._stats_task = self._stats_task, None
        if task is not None:
            task.cancel()
        if self._stall_watch is not None:
            self._stall_watch.task.cancel()
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.shutdown(timeout=EXIT_GRACE_S)


async def start(model: ModelDeployment) -> VLLMEngine:
    """Fetch the model's files, start the engine and build its HTTP API (the slow part of a
    replica's start)."""
    compat.check()
    started = time.monotonic()
    args = await asyncio.to_thread(resolve_args, model)
    engine = await _start_engine(args)
    try:
        from vllm.entrypoints.launchers.api_server.app_state import init_app_state
        from vllm.entrypoints.launchers.app import build_app

        tasks = tuple(await engine.get_supported_tasks())
        app = build_app(args, tasks, engine.model_config)
        await init_app_state(engine, app.state, args, tasks)
        _parse_tool_calls_only_with_tools(app.state)
        app.state.server = _NoServer()
        _install_error_handlers(app)
    except BaseException:
        engine.shutdown()
        raise
    logger.info(
        "engine ready in %.0f s: %s as %s (tasks: %s)",
        time.monotonic() - started,
        model.model_name,
        ", ".join(model.model_names),
        ", ".join(tasks),
    )
    return VLLMEngine(engine, app, tasks, model.serve.engine_stall_timeout_s)


def freeze_startup_heap() -> None:
    """What `vllm serve` does once its engine is up: collect, then move every object alive now
    (vLLM, torch, transformers: ~700k objects) out of the garbage collector's reach.

    Without it, each full collection while serving scans them all (0.4 s on a 2-core machine)
    and the process streams nothing meanwhile. Serve does the same for its replicas once they
    are initialized (RAY_SERVE_FREEZE_GC_ON_STARTUP, on by default); the serverless worker
    calls this."""
    from vllm.utils.gc_utils import freeze_gc_heap

    started = time.monotonic()
    freeze_gc_heap()
    logger.info(
        "%d start-up objects frozen out of garbage collection in %.2f s",
        gc.get_freeze_count(),
        time.monotonic() - started,
    )


async def _start_engine(args: Any) -> Any:
    from vllm import AsyncLLMEngine
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.usage.usage_lib import UsageContext

    engine_args = AsyncEngineArgs.from_cli_args(args)
    usage = UsageContext.OPENAI_API_SERVER
    _bind_cpu_workers(args.tensor_parallel_size * args.pipeline_parallel_size)
    vllm_config = engine_args.create_engine_config(usage_context=usage)
    _use_replica_placement_group(vllm_config)
    return AsyncLLMEngine.from_vllm_config(
        vllm_config=vllm_config,
        usage_context=usage,
        enable_log_requests=engine_args.enable_log_requests,
        aggregate_engine_logging=engine_args.aggregate_engine_logging,
        disable_log_stats=engine_args.disable_log_stats,
        stat_loggers=_metrics_loggers(engine_args.disable_log_stats),
    )


def _parse_tool_calls_only_with_tools(state: Any) -> None:
    """Chat requests without `tools` skip vLLM's tool-call parser, which would otherwise run on
    every streamed token (its text and token lists grown by copying, so quadratic in the
    output's length) to find calls that vLLM only extracts when the request has tools. With a
    reasoning parser configured every request keeps the parser."""
    chat = getattr(state, "openai_serving_chat", None)
    parser_cls = getattr(chat, "parser_cls", None)
    if parser_cls is None or getattr(parser_cls, "reasoning_parser_cls", None) is not None:
        return
    make_parser = chat._make_parser

    def make_parser_for_tools(request: Any, *args: Any, **kwargs: Any) -> Any:
        return make_parser(request, *args, **kwargs) if request.tools else None

    chat._make_parser = make_parser_for_tools


# ---------------------------------------------------------------- errors
def _install_error_handlers(app: Any) -> None:
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException
    from starlette.responses import JSONResponse

    async def validation_error(request: Any, exc: RequestValidationError) -> JSONResponse:
        message, param = describe_validation_errors(exc.errors())
        return JSONResponse(error_dict(400, message, param=param), status_code=400)

    async def http_error(request: Any, exc: HTTPException) -> JSONResponse:
        path = request.url.path
        message = http_error_message(exc.status_code, exc.detail, request.method, path)
        return JSONResponse(
            error_dict(exc.status_code, message), status_code=exc.status_code, headers=exc.headers
        )

    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
    # build_app built the app's middleware stack (SageMaker's bootstrap): built again, with these
    app.middleware_stack = app.build_middleware_stack()


def describe_validation_errors(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """A message naming every bad field (bounded), and the first one as `param`."""
    from vllm.entrypoints.serve.exception_handling.handlers.validation import (
        clean_loc_for_param,
    )

    errors = [
        {**e, "loc": tuple(p for p in e.get("loc", ()) if p != "body")}
        if isinstance(e, dict)
        else {"loc": (), "msg": str(e)}  # vLLM raises some with a message only
        for e in errors
    ]
    whole = [e for e in errors if len(e["loc"]) <= 1 and e.get("type") == "json_invalid"]
    if whole:
        detail = str(whole[0].get("ctx", {}).get("error", whole[0].get("msg", "")))
        return f"The request body is not valid JSON: {detail}", None
    if (
        errors
        and not errors[0]["loc"]
        and errors[0].get("type")
        in (
            "model_type",
            "model_attributes_type",
            "dict_type",
        )
    ):
        return "The request body must be a JSON object", None
    parts, param = [], None
    for error in errors[:10]:
        loc = clean_loc_for_param(error["loc"]) if error["loc"] else ""
        param = param or loc or None
        message = str(error.get("msg", "invalid value"))
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, Exception):
            message = str(cause)
            param = param or getattr(cause, "parameter", None)
        parts.append(f"{loc}: {message}" if loc else message)
    more = f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""
    return "Invalid request: " + "; ".join(parts) + more, param
