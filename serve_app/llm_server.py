"""The LLM deployment: each replica holds one engine (serve_app/engine/) and serves its API.

A replica starts its engine in Serve's async constructor, then serves the engine's HTTP API
(every route `vllm serve` answers for the model) behind this application's guarantees
(model_api.py: generation slots, error shapes, OpenAI's schemas), with runtime LoRA changes
shared by every replica of the deployment (lora_sync.py). Serve calls `check_health`
periodically: a dead engine makes the replica unhealthy and Serve replaces it. A sidecar
(engine_reaper) makes sure the engine's processes die with the replica, however it ends.

With one model served, the LLM replicas are the application's HTTP ingress themselves
(`LLMIngressServer`): Serve's HAProxy sends each HTTP request straight to a replica, whose app
(http_api.py) runs it in the same process, as `vllm serve` does. No deployment hop and no
per-token message between processes. With several models, the router ingress (ingress.py)
sends each request to `http` through a handle; RunPod jobs come through `job`.
"""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from . import asgi, engine_reaper, priority, worker_cpus
from .admission import GenerationSlots
from .config.plan import IngressOptions, ModelDeployment, ServeOptions
from .engine import vllm_engine
from .engine.protocol import ASGIApp, Engine
from .http_api import build_http_app
from .jobs.runner import JobRunner
from .logs import get_logger
from .lora_sync import AdapterRegistry, LoraSync
from .model_api import ModelApi
from .replicas import deployment_states

logger = get_logger(__name__)


def replica_id() -> str:
    return serve.get_replica_context().replica_id.unique_id


class LLMServer:
    async def __init__(self, model: ModelDeployment):  # type: ignore[misc]
        self._engine: Engine | None = None
        self._lora_task: asyncio.Task | None = None
        # First, so engine processes never outlive this replica, even if it is killed.
        self._reaper = engine_reaper.start()
        self.model = model
        self._engine = engine = await vllm_engine.start(model)
        self.slots = GenerationSlots(model.serve.max_concurrency, model.serve.max_queued_requests)
        api: ASGIApp = ModelApi(engine.app, self.slots)
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
        self._place_processes(model.serve)

    def _place_processes(self, options: ServeOptions) -> None:
        """Once the engine runs: the priorities of its processes, of this one and of Ray's
        background processes on this node (serve_app/priority.py); on vLLM's CPU backend, the
        CPUs of this process and its engine core (serve_app/worker_cpus.py)."""
        engine = priority.engine_pids(exclude={self._reaper.pid})
        split = worker_cpus.plan(engine) if options.pin_serving_to_reserved_cpus else None
        workers = split.workers if split else []
        core = [pid for pid in engine if pid not in workers]
        results = [
            priority.set_engine_niceness(options.engine_niceness, core),
            priority.set_replica_niceness(options.niceness),
            priority.set_background_niceness(options.background_niceness),
        ]
        if split:
            results.append(
                priority.set_niceness(
                    options.niceness, workers, "LLM_REPLICA_NICENESS", "vLLM's workers"
                )
            )
            worker_cpus.pin([os.getpid(), *core], split.serving)
            results.append(
                (
                    True,
                    f"this LLM replica and its engine core on CPUs "
                    f"{worker_cpus.describe(split.serving)}, off vLLM's workers' "
                    "(PIN_SERVING_TO_RESERVED_CPUS)",
                )
            )
        for done, message in results:
            (logger.info if done else logger.warning)(message)

    # ------------------------------------------------------------------ handle calls
    async def http(self, request: asgi.HttpRequest) -> AsyncIterator[asgi.HttpStart | bytes]:
        """One HTTP request from the router ingress, answered by this replica's model API:
        the HttpStart, then the body (chunks produced while the previous one was on its way
        travel together)."""
        async for item in asgi.call(self.api, request):
            yield item

    async def job(self, job_input: Any, wait: bool = True) -> AsyncIterator[Any]:
        """A RunPod job (jobs/runner.py)."""
        async for item in self._jobs.run(job_input, wait=wait):
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
        }

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
            states = await asyncio.to_thread(deployment_states, {name})
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
            self._jobs_handle,
            openapi=self._engine.openapi,
        )
