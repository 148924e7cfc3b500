"""The ingress deployment: HTTP in, dispatch to the LLM deployment that serves the `model`,
and RunPod's job API (/v2/{endpoint_id}/run, runsync, status, stream, cancel, ...) in front of
the job queue.

It parses only what routing needs (`model`), forwards the raw request body, and passes the
LLM replica's serialized answer through untouched: a JSON body, or vLLM's SSE chunks. It
imports neither vLLM nor pydantic models of requests, so it stays light on the token path.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    RequestCancelledError,
)
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import openai_errors
from .config.plan import IngressOptions, UnknownModelError
from .jobs.inputs import request_limits
from .logs import get_logger

logger = get_logger(__name__)

RETRY_AFTER_S = "5"
MODELS_TIMEOUT_S = 10.0
STATE_POLL_S = 2.0
# Exceptions meaning "the replica serving this request went away".
_REPLICA_GONE = (RayActorError,)

# Serve serializes the ingress class when it is decorated: everything its methods use must
# be defined above it.
app = FastAPI(
    title="ray-vllm-worker",
    description="OpenAI- and RunPod-compatible LLM serving on Ray Serve and vLLM",
)


def _error_response(status: int, body: dict[str, Any]) -> JSONResponse:
    headers = {"Retry-After": RETRY_AFTER_S} if status in (429, 503) else None
    return JSONResponse(body, status_code=status, headers=headers)


def _json_error(status: int, message: str, **kwargs: Any) -> JSONResponse:
    """OpenAI's error shape."""
    return _error_response(status, openai_errors.error_dict(status, message, **kwargs))


def _runpod_error(status: int, message: str) -> JSONResponse:
    """RunPod's error shape for the job API."""
    return _error_response(status, {"error": message})


def _is_openai_path(path: str) -> bool:
    return path.startswith("/v1/") or "/openai/v1/" in path


def _is_runpod_path(path: str) -> bool:
    """RunPod's job API (answers errors as `{"error": ...}`), not its OpenAI base URL."""
    return path.startswith("/v2/") and not _is_openai_path(path)


class ApiKeyMiddleware:
    """With API_KEY set, every route but GET /health needs `Authorization: Bearer <key>`.

    Pure ASGI (no body wrapping on the token path); compares SHA-256 digests in constant time.
    `expected_sha256` is set by the ingress when its replica starts (one ingress per replica
    process). It is a class attribute because Serve runs a frozen copy of the FastAPI app,
    while this class is shared by reference.
    """

    expected_sha256: str | None = None

    def __init__(self, asgi_app: Any):
        self.app = asgi_app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        digest = ApiKeyMiddleware.expected_sha256
        if scope["type"] != "http" or digest is None or scope["path"] == "/health":
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers") or ()).get(b"authorization", b"").decode("latin-1")
        scheme, _, key = header.partition(" ")
        given = hashlib.sha256((key if scheme.lower() == "bearer" else header).encode()).hexdigest()
        if hmac.compare_digest(given, digest):
            await self.app(scope, receive, send)
            return
        message = "Missing or invalid API key: send `Authorization: Bearer <API_KEY>`"
        if _is_openai_path(scope["path"]):
            response = _json_error(401, message)
        else:
            response = _runpod_error(401, message)
        await response(scope, receive, send)


app.add_middleware(ApiKeyMiddleware)


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    message = str(exc.detail)
    if exc.status_code == 404:
        message = f"Unknown route: {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"Method {request.method} is not allowed on {request.url.path}"
    if _is_runpod_path(request.url.path):
        return _runpod_error(exc.status_code, message)
    return _json_error(exc.status_code, message)


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    message = f"Invalid request: {loc}: {first.get('msg', 'invalid')}"
    if _is_runpod_path(request.url.path):
        return _runpod_error(400, message)
    return _json_error(400, message, param=loc)


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


def _deployment_states(names: set[str]) -> dict[str, dict[str, Any]]:
    """Status and running replica count of the named deployments of this application."""
    context = serve.get_replica_context()
    status = serve.status().applications.get(context.app_name)
    states: dict[str, dict[str, Any]] = {}
    if status is None:
        return states
    for name, deployment in status.deployments.items():
        if name in names:
            states[name] = {
                "status": str(deployment.status.value),
                "running_replicas": int(deployment.replica_states.get("RUNNING", 0)),
            }
    return states


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=1000)
@serve.ingress(app)
class Ingress:
    """OpenAI routes (under /v1, /openai/v1 and RunPod's /v2/{endpoint_id}/openai/v1), RunPod's
    job API (/v2/{endpoint_id}/...) and /health."""

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
        ApiKeyMiddleware.expected_sha256 = options.api_key_sha256
        self._poller = asyncio.create_task(self._poll_states())

    async def _poll_states(self) -> None:
        """Keep the LLM deployments' states (running replicas) a few seconds fresh."""
        while True:
            try:
                self._states = await asyncio.to_thread(_deployment_states, set(self._llms))
            except Exception as exc:  # the controller is restarting: keep the last view
                logger.warning("cannot read deployment states: %s", exc)
            await asyncio.sleep(STATE_POLL_S)

    async def _no_running_replica(self, deployment: str) -> bool:
        """True if the deployment has no running replica now (a cached zero is re-read: the
        cache may predate a replica that just started)."""
        state = self._states.get(deployment)
        if state is None or state["running_replicas"] > 0:
            return False
        self._states = await asyncio.to_thread(_deployment_states, set(self._llms))
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
            return _json_error(
                503,
                f"No replica of {deployment} became ready within {timeout:g} s "
                "(REPLICA_WAIT_TIMEOUT_S); it may still be starting, retry later",
            )
        except Exception as exc:
            return self._dispatch_error(exc, deployment)
        return None

    def _unknown_endpoint(self, endpoint_id: str | None) -> str | None:
        """Why a /v2/{endpoint_id}/... path is not this endpoint, or None."""
        expected = self._options.endpoint_id
        if endpoint_id is None or expected is None or endpoint_id == expected:
            return None
        return f"Unknown endpoint {endpoint_id!r}: this deployment serves {expected!r}"

    # ------------------------------------------------------------------ routing
    async def _openai(self, route: str, request: Request, endpoint_id: str | None) -> Response:
        if unknown := self._unknown_endpoint(endpoint_id):
            return _json_error(404, unknown)
        body = await request.body()
        try:
            payload = json.loads(body)
        except ValueError as exc:
            return _json_error(400, f"The request body is not valid JSON: {exc}")
        if not isinstance(payload, dict):
            return _json_error(400, "The request body must be a JSON object")
        try:
            deployment = self._options.models.deployment_for(payload.get("model"))
        except UnknownModelError as exc:
            return JSONResponse(exc.openai_error(), status_code=exc.status)
        if waited := await self._await_replica(deployment):
            return waited

        stream: DeploymentResponseGenerator = (
            self._llms[deployment].options(stream=True).openai.remote(route, body)
        )
        try:
            status, is_stream = await stream.__anext__()
            if not is_stream:
                return Response(
                    await stream.__anext__(), status_code=status, media_type="application/json"
                )
        except BaseException as exc:
            stream.cancel()
            return self._dispatch_error(exc, deployment)
        return StreamingResponse(
            _relay(stream),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    def _dispatch_error(self, exc: BaseException, deployment: str) -> Response:
        if isinstance(exc, asyncio.CancelledError | RequestCancelledError):
            raise exc
        if isinstance(exc, DeploymentUnavailableError):
            return _json_error(
                503,
                f"No healthy engine for {deployment}: the deployment failed to start "
                "(see `serve status` and the replica logs)",
            )
        if isinstance(exc, BackPressureError):
            return _json_error(503, f"{deployment} is at capacity; retry later")
        if isinstance(exc, _REPLICA_GONE):
            return _json_error(
                503, f"The {deployment} replica serving this request died; retry shortly"
            )
        logger.exception("request to %s failed", deployment)
        return _json_error(500, f"Internal error while serving the request ({type(exc).__name__})")

    # ------------------------------------------------------------------ OpenAI routes
    @app.post("/v1/chat/completions")
    @app.post("/openai/v1/chat/completions")
    @app.post("/v2/{endpoint_id}/openai/v1/chat/completions")
    async def chat_completions(self, request: Request, endpoint_id: str | None = None) -> Response:
        return await self._openai("chat", request, endpoint_id)

    @app.post("/v1/completions")
    @app.post("/openai/v1/completions")
    @app.post("/v2/{endpoint_id}/openai/v1/completions")
    async def completions(self, request: Request, endpoint_id: str | None = None) -> Response:
        return await self._openai("completions", request, endpoint_id)

    @app.get("/v1/models")
    @app.get("/openai/v1/models")
    @app.get("/v2/{endpoint_id}/openai/v1/models")
    async def models(self, endpoint_id: str | None = None) -> JSONResponse:
        if unknown := self._unknown_endpoint(endpoint_id):
            return _json_error(404, unknown)
        return JSONResponse({"object": "list", "data": await self._model_cards()})

    async def _model_cards(self) -> list[dict[str, Any]]:
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

    # ------------------------------------------------------------------ RunPod job API
    async def _job_call(self, endpoint_id: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call the job queue; a JSONResponse if that cannot be done."""
        if unknown := self._unknown_endpoint(endpoint_id):
            return _runpod_error(404, unknown)
        try:
            return await getattr(self._jobs, method).remote(*args, **kwargs)
        except (RayActorError, DeploymentUnavailableError, BackPressureError) as exc:
            logger.warning("job queue unavailable: %s", exc)
            return _runpod_error(503, "The job queue is unavailable; retry shortly")

    async def _submit(self, endpoint_id: str, request: Request, sync: bool) -> Any:
        try:
            body = json.loads(await request.body())
        except ValueError as exc:
            return _runpod_error(400, f"The request body is not valid JSON: {exc}")
        try:
            limits = request_limits(body)
        except ValueError as exc:
            return _runpod_error(400, str(exc))
        return await self._job_call(endpoint_id, "submit", body["input"], sync=sync, **limits)

    @app.post("/v2/{endpoint_id}/run")
    async def run(self, endpoint_id: str, request: Request) -> Any:
        return await self._submit(endpoint_id, request, sync=False)

    @app.post("/v2/{endpoint_id}/runsync")
    async def runsync(self, endpoint_id: str, request: Request, wait: int | None = None) -> Any:
        """Wait up to RUNSYNC_TIMEOUT_S (or `wait` ms) for the job; then its id to poll."""
        submitted = await self._submit(endpoint_id, request, sync=True)
        if isinstance(submitted, Response):
            return submitted
        timeout_s = wait / 1000 if wait is not None else self._options.runsync_timeout_s
        return await self._found(
            await self._job_call(endpoint_id, "wait", submitted["id"], max(0.0, timeout_s)),
            submitted["id"],
        )

    @app.get("/v2/{endpoint_id}/status/{job_id}")
    @app.post("/v2/{endpoint_id}/status/{job_id}")
    async def status(self, endpoint_id: str, job_id: str) -> Any:
        return await self._found(await self._job_call(endpoint_id, "status", job_id), job_id)

    @app.get("/v2/{endpoint_id}/stream/{job_id}")
    @app.post("/v2/{endpoint_id}/stream/{job_id}")
    async def stream(self, endpoint_id: str, job_id: str) -> Any:
        return await self._found(await self._job_call(endpoint_id, "stream", job_id), job_id)

    @app.post("/v2/{endpoint_id}/cancel/{job_id}")
    async def cancel(self, endpoint_id: str, job_id: str) -> Any:
        return await self._found(await self._job_call(endpoint_id, "cancel", job_id), job_id)

    @app.post("/v2/{endpoint_id}/purge-queue")
    async def purge_queue(self, endpoint_id: str) -> Any:
        return await self._job_call(endpoint_id, "purge")

    @app.get("/v2/{endpoint_id}/health")
    async def runpod_health(self, endpoint_id: str) -> Any:
        return await self._job_call(endpoint_id, "health")

    async def _found(self, result: Any, job_id: str) -> Any:
        if result is None:
            return _runpod_error(
                404,
                f"Job {job_id!r} not found (finished jobs are kept for JOB_RETENTION_S seconds)",
            )
        return result

    # ------------------------------------------------------------------ health
    @app.get("/health")
    async def health(self) -> JSONResponse:
        """200 when every LLM deployment has a running replica; 503 otherwise."""
        states = await asyncio.to_thread(_deployment_states, set(self._llms))
        ready = bool(states) and all(s["running_replicas"] > 0 for s in states.values())
        return JSONResponse(
            {"status": "ok" if ready else "unavailable", "deployments": states},
            status_code=200 if ready else 503,
        )
