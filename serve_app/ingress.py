"""The ingress deployment: HTTP in, dispatch to the LLM deployment that serves the `model`.

It parses only what routing needs (`model`), forwards the raw request body, and passes the
LLM replica's serialized answer through untouched: a JSON body, or vLLM's SSE chunks. It
imports neither vLLM nor pydantic models of requests, so it stays light on the token path.
"""

from __future__ import annotations

import asyncio
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
from .config.plan import IngressOptions
from .logs import get_logger

logger = get_logger(__name__)

OPENAI_PREFIXES = ("/v1", "/openai/v1", "/v2/{endpoint_id}/openai/v1")
RETRY_AFTER_S = "5"
MODELS_TIMEOUT_S = 10.0
# Exceptions meaning "the replica serving this request went away".
_REPLICA_GONE = (RayActorError,)

# Serve serializes the ingress class when it is decorated: everything its methods use must
# be defined above it.
app = FastAPI(
    title="ray-vllm-worker",
    description="OpenAI- and RunPod-compatible LLM serving on Ray Serve and vLLM",
)


def _json_error(status: int, message: str, **kwargs: Any) -> JSONResponse:
    headers = {"Retry-After": RETRY_AFTER_S} if status in (429, 503) else None
    return JSONResponse(
        openai_errors.error_dict(status, message, **kwargs), status_code=status, headers=headers
    )


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    message = str(exc.detail)
    if exc.status_code == 404:
        message = f"Unknown route: {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"Method {request.method} is not allowed on {request.url.path}"
    return _json_error(exc.status_code, message)


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    return _json_error(400, f"Invalid request: {loc}: {first.get('msg', 'invalid')}", param=loc)


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
    """OpenAI routes (under /v1, /openai/v1 and RunPod's /v2/{endpoint_id}/openai/v1)."""

    def __init__(self, options: IngressOptions, llms: dict[str, DeploymentHandle]):
        self._options = options
        self._llms = llms
        self._started = int(time.time())

    # ------------------------------------------------------------------ routing
    def _deployment_for(self, payload: dict[str, Any]) -> tuple[str | None, JSONResponse | None]:
        model = payload.get("model")
        if model is None:
            if self._options.default_deployment:
                return self._options.default_deployment, None
            return None, _json_error(400, "`model` is required: several models are served")
        if not isinstance(model, str):
            return None, _json_error(400, "`model` must be a string", param="model")
        deployment = self._options.routes.get(model)
        if deployment is None:
            available = ", ".join(sorted(self._options.routes))
            return None, _json_error(
                404,
                f"The model `{model}` does not exist. Available models: {available}",
                param="model",
                code="model_not_found",
            )
        return deployment, None

    async def _openai(self, route: str, request: Request) -> Response:
        body = await request.body()
        try:
            payload = json.loads(body)
        except ValueError as exc:
            return _json_error(400, f"The request body is not valid JSON: {exc}")
        if not isinstance(payload, dict):
            return _json_error(400, "The request body must be a JSON object")
        deployment, error = self._deployment_for(payload)
        if error is not None:
            return error

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
    async def chat_completions(self, request: Request) -> Response:
        return await self._openai("chat", request)

    @app.post("/v1/completions")
    @app.post("/openai/v1/completions")
    @app.post("/v2/{endpoint_id}/openai/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await self._openai("completions", request)

    @app.get("/v1/models")
    @app.get("/openai/v1/models")
    @app.get("/v2/{endpoint_id}/openai/v1/models")
    async def models(self) -> JSONResponse:
        return JSONResponse({"object": "list", "data": await self._model_cards()})

    async def _model_cards(self) -> list[dict[str, Any]]:
        """vLLM's model cards from each deployment; from the plan if one does not answer."""
        cards: list[dict[str, Any]] = []
        for deployment, handle in self._llms.items():
            try:
                listing = await asyncio.wait_for(handle.models.remote(), MODELS_TIMEOUT_S)
                cards += listing["data"]
            except Exception as exc:
                logger.warning("model list of %s unavailable: %s", deployment, exc)
                cards += [
                    {"id": name, "object": "model", "created": self._started, "owned_by": "vllm"}
                    for name, target in self._options.routes.items()
                    if target == deployment
                ]
        return cards

    @app.get("/health")
    async def health(self) -> JSONResponse:
        """200 when every LLM deployment has a running replica; 503 otherwise."""
        states = await asyncio.to_thread(_deployment_states, set(self._llms))
        ready = bool(states) and all(s["running_replicas"] > 0 for s in states.values())
        return JSONResponse(
            {"status": "ok" if ready else "unavailable", "deployments": states},
            status_code=200 if ready else 503,
        )
