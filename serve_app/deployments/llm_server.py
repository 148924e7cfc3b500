"""The LLM deployment: each replica holds one engine (serve_app/engine/) and serves its API.

A replica starts its engine in Serve's async constructor, then serves the engine's HTTP API
(every route `vllm serve` answers for the model) behind this application's guarantees
(http/model_api.py: generation slots, error shapes, OpenAI's schemas), with runtime LoRA changes
shared by every replica of the deployment (lora_sync.py). Serve calls `check_health`
periodically: a dead engine makes the replica unhealthy and Serve replaces it. A sidecar
(engine_reaper) makes sure the engine's processes die with the replica, however it ends.

With one model served, the LLM replicas are the application's HTTP ingress themselves
(`LLMIngressServer`): Serve's HAProxy sends each HTTP request straight to a replica, whose app
(http/app.py) runs it in the same process, as `vllm serve` does. No deployment hop and no
per-token message between processes. With several models, the router ingress (ingress.py)
sends each request to `http` through a handle; RunPod jobs come through `job`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app import host
from serve_app.config.plan import IngressOptions, ModelDeployment
from serve_app.deployments import engine_reaper, replicas
from serve_app.deployments.lora_sync import AdapterRegistry, LoraSync
from serve_app.engine import vllm_engine
from serve_app.engine.protocol import Engine
from serve_app.http import asgi
from serve_app.http.admission import GenerationSlots
from serve_app.http.app import build_http_app
from serve_app.http.asgi import ASGIApp
from serve_app.http.model_api import ModelApi
from serve_app.jobs.routes import job_routes
from serve_app.jobs.runner import JobRunner
from serve_app.jobs.translate import ReplicaBusy
from serve_app.logs import get_logger

logger = get_logger(__name__)


def replica_id() -> str:
    return serve.get_replica_context().replica_id.unique_id


class LLMServer:
    SERVES_HTTP = False  # the application's HTTP ingress (one model served)

    async def __init__(self, model: ModelDeployment):  # type: ignore[misc]
        self._engine: Engine | None = None
        self._lora_task: asyncio.Task | None = None
        # First, so engine processes never outlive this replica, even if it is killed.
        self._reaper = engine_reaper.start()
        self.model = model
        self._engine = engine = await vllm_engine.start(model)
        self.slots = GenerationSlots(model.serve.max_concurrency, model.serve.max_queued_requests)
        api: ASGIApp = ModelApi(engine.app, self.slots, model.serve.max_n)
        if model.runtime_lora_updating:
            context = serve.get_replica_context()
            lora = LoraSync(api, AdapterRegistry(context.app_name, model.deployment_name))
            await lora.sync()  # adapters loaded before this replica started
            self._lora_task = asyncio.create_task(lora.run())
            api = lora
        self.api = api
        self._jobs = JobRunner(
            api, self.slots, model.served_model_names[0], model.jobs, replica_id()
        )
        host.tune(
            model.serve.host,
            engine=True,
            http=self.SERVES_HTTP,
            exclude=frozenset({self._reaper.pid}),
        )

    # ------------------------------------------------------------------ handle calls
    async def http(self, request: asgi.HttpRequest) -> AsyncIterator[asgi.HttpStart | bytes]:
        """One HTTP request from the router ingress, answered by this replica's model API:
        the HttpStart, then the body (chunks produced while the previous one was on its way
        travel together)."""
        async with contextlib.aclosing(asgi.call(self.api, request)) as answer:
            async for item in answer:
                yield item

    async def job(self, job_input: Any, wait: bool = True) -> AsyncIterator[Any]:
        """A RunPod job (jobs/runner.py). A replica whose engine died takes none: the job
        queue offers it again (to the replica that replaces this one, or another)."""
        if not wait and not await self._engine_alive():
            yield ReplicaBusy()
            return
        async with contextlib.aclosing(self._jobs.run(job_input, wait=wait)) as items:
            async for item in items:
                yield item

    async def ready(self) -> bool:
        """Answers once the replica runs: the router's probe while none does."""
        return True

    async def stats(self) -> dict[str, Any]:
        """This replica's process and the requests its engine is working on (running or queued)."""
        assert self._engine is not None
        return {
            "pid": os.getpid(),
            "supported_tasks": list(self._engine.supported_tasks),
            "lora_adapters": sorted(self.api.loaded) if isinstance(self.api, LoraSync) else [],
            "gc_frozen_objects": gc.get_freeze_count(),
            "unfinished_requests": self._engine.unfinished_requests(),
            "running": self.slots.running,
            "waiting": self.slots.waiting,
            "prefix_cache": self._engine.prefix_cache(),
            "kv_cache_tokens": self._engine.kv_cache_tokens,
        }

    def record_routing_stats(self) -> dict[str, Any]:
        """Serve's routing stats of this replica, which the request router reads
        (serve_app/routing/): how many tokens its KV cache holds."""
        return {"kv_cache_tokens": self._engine.kv_cache_tokens if self._engine else 0}

    async def _engine_alive(self) -> bool:
        try:
            await self.check_health()
        except Exception:
            return False
        return True

    async def check_health(self) -> None:
        """Raises if the engine is dead (Serve then replaces this replica)."""
        if self._engine is None:
            raise RuntimeError("the engine is not running")
        await self._engine.check_health()

    async def health(self) -> tuple[bool, dict[str, Any]]:
        """GET /health of a replica that is the ingress: healthy when its engine is; says which
        replica answered, and the deployment's replica count."""
        name = self.model.deployment_name
        replica = {"replica": replica_id()}
        try:
            states = await replicas.states({name})
        except Exception as exc:  # the controller is restarting: this replica still answers
            states = {name: {"status": f"unknown ({type(exc).__name__})"}}
        try:
            await self.check_health()
        except Exception as exc:
            return False, {**replica, "deployments": states, "error": f"engine unhealthy: {exc}"}
        return True, {**replica, "deployments": states}

    def __del__(self) -> None:
        task, self._lora_task = getattr(self, "_lora_task", None), None
        if task is not None:
            task.cancel()
        engine, self._engine = getattr(self, "_engine", None), None
        if engine is not None:
            engine.shutdown()


class LLMIngressServer(LLMServer):
    """An LLM replica that is also the application's HTTP ingress (one model served).

    Wrap with `serve.ingress()`: Serve calls `__serve_build_asgi_app__` once the engine runs.
    """

    SERVES_HTTP = True

    async def __init__(  # type: ignore[misc]
        self, model: ModelDeployment, ingress: IngressOptions, jobs: DeploymentHandle
    ):
        await super().__init__(model)
        self._ingress_options = ingress
        self._jobs_handle = jobs

    async def __serve_build_asgi_app__(self) -> FastAPI:
        assert self._engine is not None
        return build_http_app(
            self._ingress_options,
            self.api,
            self.health,
            routers=[job_routes(self._ingress_options, self._jobs_handle)],
            openapi=self._engine.openapi,
        )
