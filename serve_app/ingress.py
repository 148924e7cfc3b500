"""The router ingress: with several models served, it answers HTTP (serve_app/http_api.py)
and sends each OpenAI request to the LLM deployment that serves its `model`.

It parses only what routing needs (`model`), forwards the raw request body, and passes the
LLM replica's serialized answer through untouched: a JSON body, or vLLM's SSE chunks, which
the replica coalesces (everything produced since the previous message goes in one) so a busy
replica sends fewer, larger messages. It imports neither vLLM nor pydantic models of
requests, so it stays light on the token path.

With one model served there is no router: the LLM replicas answer HTTP themselves
(serve_app/llm_server.py).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    RequestCancelledError,
)
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from . import openai_errors
from .config.plan import IngressOptions, UnknownModelError
from .http_api import SSE_HEADERS, Route, build_http_app, openai_error, serialized_json
from .logs import get_logger
from .replicas import deployment_states

logger = get_logger(__name__)

MODELS_TIMEOUT_S = 10.0
STATE_POLL_S = 2.0
# Exceptions meaning "the replica serving this request went away".
_REPLICA_GONE = (RayActorError,)


async def _relay(stream: DeploymentResponseGenerator) -> AsyncIterator[str | bytes]:
    """Pass SSE chunks through; end with an error event if the replica goes away mid-stream.

    When the client disconnects, Starlette stops iterating and this generator is closed:
    cancelling the Serve call aborts the generation in the engine.
    """
    try:
        async for chunk in stream:
            yield chunk
    except (asyncio.CancelledError, GeneratorExit):
        raise
    except _REPLICA_GONE:
        yield openai_errors.sse_error(503, "The replica serving this stream died; retry")
    except Exception as exc:
        logger.exception("stream failed")
        yield openai_errors.sse_error(500, f"The stream failed ({type(exc).__name__})")
    finally:
        stream.cancel()


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=1000)
@serve.ingress()
class Ingress:
    """The HTTP API in front of several LLM deployments (a `http_api.Backend`)."""

    async def __init__(
        self,
        options: IngressOptions,
        llms: dict[str, DeploymentHandle],
        jobs: DeploymentHandle,
    ):
        self._options = options
        self._llms = llms
        self._jobs = jobs
        self._started = int(time.time())
        self._cards: dict[str, list[dict[str, Any]]] = {}
        self._states: dict[str, dict[str, Any]] = {}
        self._poller = asyncio.create_task(self._poll_states())

    async def __serve_build_asgi_app__(self) -> FastAPI:
        return build_http_app(self._options, self, self._jobs)

    async def _poll_states(self) -> None:
        """Keep the LLM deployments' states (running replicas) a few seconds fresh."""
        while True:
            try:
                self._states = await asyncio.to_thread(deployment_states, set(self._llms))
            except Exception as exc:  # the controller is restarting: keep the last view
                logger.warning("cannot read deployment states: %s", exc)
            await asyncio.sleep(STATE_POLL_S)

    async def _no_running_replica(self, deployment: str) -> bool:
        """True if the deployment has no running replica now (a cached zero is re-read: the
        cache may predate a replica that just started)."""
        state = self._states.get(deployment)
        if state is None or state["running_replicas"] > 0:
            return False
        self._states = await asyncio.to_thread(deployment_states, set(self._llms))
        state = self._states.get(deployment)
        return state is not None and state["running_replicas"] == 0

    async def _await_replica(self, deployment: str) -> Response | None:
        """With no running replica (scale from zero, replacement), wait a bounded time for one.

        The probe itself is a queued request, so Serve's autoscaler starts a replica for it.
        """
        if not await self._no_running_replica(deployment):
            return None
        timeout = self._options.replica_wait_timeout_s
        try:
            await asyncio.wait_for(self._llms[deployment].ready.remote(), timeout)
        except TimeoutError:
            return openai_error(
                503,
                f"No replica of {deployment} became ready within {timeout:g} s "
                "(REPLICA_WAIT_TIMEOUT_S); it may still be starting, retry later",
            )
        except Exception as exc:
            return self._dispatch_error(exc, deployment)
        return None

    # ------------------------------------------------------------------ Backend
    async def openai(self, route: Route, body: bytes) -> Response:
        try:
            payload = json.loads(body)
        except ValueError as exc:
            return openai_error(400, f"The request body is not valid JSON: {exc}")
        if not isinstance(payload, dict):
            return openai_error(400, "The request body must be a JSON object")
        try:
            deployment = self._options.models.deployment_for(payload.get("model"))
        except UnknownModelError as exc:
            return JSONResponse(exc.openai_error(), status_code=exc.status)
        if waited := await self._await_replica(deployment):
            return waited

        stream: DeploymentResponseGenerator = (
            self._llms[deployment].options(stream=True).openai_coalesced.remote(route, body)
        )
        try:
            status, is_stream = await stream.__anext__()
            if not is_stream:
                return serialized_json(await stream.__anext__(), status)
        except BaseException as exc:
            stream.cancel()
            return self._dispatch_error(exc, deployment)
        return StreamingResponse(
            _relay(stream), media_type="text/event-stream", headers=SSE_HEADERS
        )

    def _dispatch_error(self, exc: BaseException, deployment: str) -> Response:
        if isinstance(exc, asyncio.CancelledError | RequestCancelledError):
            raise exc
        if isinstance(exc, DeploymentUnavailableError):
            return openai_error(
                503,
                f"No healthy engine for {deployment}: the deployment failed to start "
                "(see `serve status` and the replica logs)",
            )
        if isinstance(exc, BackPressureError):
            return openai_error(503, f"{deployment} is at capacity; retry later")
        if isinstance(exc, _REPLICA_GONE):
            return openai_error(
                503, f"The {deployment} replica serving this request died; retry shortly"
            )
        logger.exception("request to %s failed", deployment)
        return openai_error(500, f"Internal error while serving the request ({type(exc).__name__})")

    async def model_cards(self) -> list[dict[str, Any]]:
        """vLLM's model cards from each deployment, fetched once (a busy replica would make
        the call wait behind generations); from the plan while one does not answer."""
        cards: list[dict[str, Any]] = []
        for deployment, handle in self._llms.items():
            if deployment in self._cards:
                cards += self._cards[deployment]
                continue
            try:
                if await self._no_running_replica(deployment):
                    raise LookupError("no running replica")  # do not wake it just to list it
                listing = await asyncio.wait_for(handle.models.remote(), MODELS_TIMEOUT_S)
                self._cards[deployment] = listing["data"]
                cards += listing["data"]
            except Exception as exc:
                logger.warning("model list of %s unavailable: %s", deployment, exc)
                cards += [
                    {"id": name, "object": "model", "created": self._started, "owned_by": "vllm"}
                    for name, target in self._options.models.routes.items()
                    if target == deployment
                ]
        return cards

    async def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy when every LLM deployment has a running replica."""
        states = await asyncio.to_thread(deployment_states, set(self._llms))
        ready = bool(states) and all(s["running_replicas"] > 0 for s in states.values())
        return ready, {"deployments": states}
