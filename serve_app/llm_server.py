"""The LLM deployment: each replica owns one vLLM engine (serve_app/engine.py).

The deployment class is the engine class itself (no delegation on the token path), started
by Serve's async constructor. Serve calls `check_health` periodically: a dead engine makes the
replica unhealthy and Serve replaces it. A sidecar (engine_reaper) makes sure the engine's
processes die with the replica, however it ends.

With one model served, the LLM replicas are the application's HTTP ingress themselves
(`LLMIngressServer`): Serve (HAProxy, or its proxy) sends each HTTP request straight to a
replica, whose FastAPI app (serve_app/http_api.py) calls the engine in the same process, as
`vllm serve` does. No deployment hop and no per-token message between processes. With several
models, a router ingress (serve_app/ingress.py) calls these replicas through handles.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response, StreamingResponse
from ray.serve.handle import DeploymentHandle

from . import engine_reaper, priority, worker_cpus
from .config.plan import IngressOptions, ModelDeployment, ServeOptions
from .engine import LLMEngine, replica_id
from .http_api import SSE_HEADERS, Route, build_http_app, serialized_json
from .logs import get_logger
from .replicas import deployment_states

logger = get_logger(__name__)


class LLMServer(LLMEngine):
    async def __init__(self, model: ModelDeployment):  # type: ignore[misc]
        self._engine = None
        # First, so engine processes never outlive this replica, even if it is killed.
        self._reaper = engine_reaper.start()
        super().__init__(model, *await self.boot(model))
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

    async def ready(self) -> bool:
        """Answers once the replica runs: the router's probe while none does."""
        return True

    def __del__(self) -> None:
        self.shutdown()


class EngineBackend:
    """The OpenAI routes answered by the engine of this process (http_api.Backend)."""

    def __init__(self, engine: LLMEngine):
        self._engine = engine

    async def openai(self, route: Route, body: bytes) -> Response:
        answer = self._engine.openai(route, body)
        status, is_stream = await anext(answer)
        if not is_stream:
            return serialized_json(await anext(answer), status)
        # vLLM's SSE chunks, as its generator yields them; closing this response (the client
        # went away) closes the generator, which aborts the request in the engine.
        return StreamingResponse(answer, media_type="text/event-stream", headers=SSE_HEADERS)

    async def model_cards(self) -> list[dict[str, Any]]:
        return (await self._engine.models())["data"]

    async def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy when this replica's engine is; says which replica answered, and the
        deployment's replica count."""
        name = self._engine.model.deployment_name
        replica = {"replica": replica_id()}
        try:
            states = await asyncio.to_thread(deployment_states, {name})
        except Exception as exc:  # the controller is restarting: this replica still answers
            states = {name: {"status": f"unknown ({type(exc).__name__})"}}
        try:
            await self._engine.check_health()
        except Exception as exc:
            return False, {**replica, "deployments": states, "error": f"engine unhealthy: {exc}"}
        return True, {**replica, "deployments": states}


class LLMIngressServer(LLMServer):
    """An LLM replica that is also the application's HTTP ingress (one model served).

    Wrap with `serve.ingress()`: Serve calls `__serve_build_asgi_app__` once the engine runs.
    """

    async def __init__(  # type: ignore[misc]
        self, model: ModelDeployment, ingress: IngressOptions, jobs: DeploymentHandle
    ):
        await super().__init__(model)
        self._ingress_options = ingress
        self._jobs = jobs

    async def __serve_build_asgi_app__(self) -> FastAPI:
        return build_http_app(self._ingress_options, EngineBackend(self), self._jobs)
