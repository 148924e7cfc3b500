"""The HTTP API of the application: OpenAI routes, RunPod's job API and /health.

One FastAPI app, built in each ingress replica by `build_http_app` around a `Backend` that
answers the OpenAI requests:

* in the LLM replica itself when one model is served (serve_app/llm_server.py): the request
  goes straight to the engine in the same process, as in `vllm serve`;
* through the router ingress when several are (serve_app/ingress.py), by `model`.

Answers leave already serialized (a JSON body, or vLLM's SSE chunks), so nothing on the token
path parses or re-encodes them. RunPod's job routes go to the job queue deployment. Errors
use the protocol's own shape: OpenAI's error JSON on OpenAI routes, `{"error": ...}` on the
job API.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any, Literal, Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import openai_errors, write_coalescing
from .config.plan import IngressOptions
from .jobs.inputs import request_limits
from .logs import get_logger, quiet_access_log

logger = get_logger(__name__)

Route = Literal["chat", "completions"]
RETRY_AFTER_S = "5"
OPENAI_PREFIXES = ("/v1", "/openai/v1", "/v2/{endpoint_id}/openai/v1")
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class Backend(Protocol):
    """What answers the OpenAI routes for the models of this application."""

    async def openai(self, route: Route, body: bytes) -> Response:
        """The response to one chat or completions request (`body` is the raw JSON)."""

    async def model_cards(self) -> list[dict[str, Any]]:
        """The model cards of /v1/models (served names and LoRA adapters)."""

    async def health(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, details) for GET /health."""


def _retry_after(status: int) -> dict[str, str] | None:
    """Overload and unavailability answers say when to retry (the OpenAI SDK honours it)."""
    return {"Retry-After": RETRY_AFTER_S} if status in (429, 503) else None


def error_response(status: int, body: dict[str, Any]) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=_retry_after(status))


def serialized_json(body: bytes, status: int) -> Response:
    """An answer the engine already serialized, passed through as is."""
    return Response(
        body, status_code=status, media_type="application/json", headers=_retry_after(status)
    )


def openai_error(status: int, message: str, **kwargs: Any) -> JSONResponse:
    """OpenAI's error shape."""
    return error_response(status, openai_errors.error_dict(status, message, **kwargs))


def runpod_error(status: int, message: str) -> JSONResponse:
    """RunPod's error shape for the job API."""
    return error_response(status, {"error": message})


def is_openai_path(path: str) -> bool:
    return path.startswith("/v1/") or "/openai/v1/" in path


def is_runpod_path(path: str) -> bool:
    """RunPod's job API (answers errors as `{"error": ...}`), not its OpenAI base URL."""
    return path.startswith("/v2/") and not is_openai_path(path)


class ApiKeyMiddleware:
    """With API_KEY set, every route but GET /health needs `Authorization: Bearer <key>`.

    Pure ASGI (no body wrapping on the token path); compares SHA-256 digests in constant time.
    """

    def __init__(self, asgi_app: Any, expected_sha256: str):
        self.app = asgi_app
        self.expected_sha256 = expected_sha256

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] == "/health":
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers") or ()).get(b"authorization", b"").decode("latin-1")
        scheme, _, key = header.partition(" ")
        given = hashlib.sha256((key if scheme.lower() == "bearer" else header).encode()).hexdigest()
        if hmac.compare_digest(given, self.expected_sha256):
            await self.app(scope, receive, send)
            return
        message = "Missing or invalid API key: send `Authorization: Bearer <API_KEY>`"
        await _error_for_path(scope["path"], 401, message)(scope, receive, send)


def _error_for_path(path: str, status: int, message: str) -> JSONResponse:
    return runpod_error(status, message) if is_runpod_path(path) else openai_error(status, message)


class BodyTooLarge(StarletteHTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"The request body is larger than MAX_REQUEST_BYTES ({limit} bytes)")


class BodyLimitMiddleware:
    """Bodies over MAX_REQUEST_BYTES get 413: at once when Content-Length says so, else as
    soon as that much has arrived (the route's error handler answers it)."""

    def __init__(self, asgi_app: Any, limit: int):
        self.app = asgi_app
        self.limit = limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or ()).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            error = BodyTooLarge(self.limit)
            await _error_for_path(scope["path"], 413, error.detail)(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, limited_receive, send)


# RunPod's job polls: every waiting client sends one per job every second or faster.
STATUS_ROUTE = "/v2/{endpoint_id}/status/{job_id}"
STREAM_ROUTE = "/v2/{endpoint_id}/stream/{job_id}"


def build_http_app(options: IngressOptions, backend: Backend, jobs: DeploymentHandle) -> FastAPI:
    """The FastAPI app of an ingress replica. Built before Serve starts the replica's HTTP
    server, so every connection it accepts has its writes coalesced (COALESCE_HTTP_WRITES)."""
    if not options.log_job_polls:
        quiet_access_log({STATUS_ROUTE, STREAM_ROUTE})
    if options.coalesce_http_writes and write_coalescing.install():
        logger.info("HTTP writes coalesced per event-loop tick (COALESCE_HTTP_WRITES)")
    app = FastAPI(
        title="ray-vllm-worker",
        description="OpenAI- and RunPod-compatible LLM serving on Ray Serve and vLLM",
    )
    # Added last, runs first: the API key is checked before the body is read.
    app.add_middleware(BodyLimitMiddleware, limit=options.max_request_bytes)
    if options.api_key_sha256:
        app.add_middleware(ApiKeyMiddleware, expected_sha256=options.api_key_sha256)
    _add_error_handlers(app)

    def unknown_endpoint(endpoint_id: str | None) -> str | None:
        """Why a /v2/{endpoint_id}/... path is not this endpoint, or None."""
        expected = options.endpoint_id
        if endpoint_id is None or expected is None or endpoint_id == expected:
            return None
        return f"Unknown endpoint {endpoint_id!r}: this deployment serves {expected!r}"

    # ---------------------------------------------------------------- OpenAI
    def openai_route(route: Route):
        async def handler(request: Request, endpoint_id: str | None = None) -> Response:
            if unknown := unknown_endpoint(endpoint_id):
                return openai_error(404, unknown)
            return await backend.openai(route, await request.body())

        return handler

    async def models(endpoint_id: str | None = None) -> JSONResponse:
        if unknown := unknown_endpoint(endpoint_id):
            return openai_error(404, unknown)
        return JSONResponse({"object": "list", "data": await backend.model_cards()})

    for prefix in OPENAI_PREFIXES:
        app.post(f"{prefix}/chat/completions")(openai_route("chat"))
        app.post(f"{prefix}/completions")(openai_route("completions"))
        app.get(f"{prefix}/models")(models)

    # ---------------------------------------------------------------- RunPod job API
    async def job_call(endpoint_id: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call the job queue; a JSONResponse if that cannot be done."""
        if unknown := unknown_endpoint(endpoint_id):
            return runpod_error(404, unknown)
        try:
            return await getattr(jobs, method).remote(*args, **kwargs)
        except (RayActorError, DeploymentUnavailableError, BackPressureError) as exc:
            logger.warning("job queue unavailable: %s", exc)
            return runpod_error(503, "The job queue is unavailable; retry shortly")

    def found(result: Any, job_id: str) -> Any:
        if result is None:
            return runpod_error(
                404,
                f"Job {job_id!r} not found (finished jobs are kept for JOB_RETENTION_S seconds)",
            )
        return result

    async def submit(endpoint_id: str, request: Request, sync: bool) -> Any:
        try:
            body = json.loads(await request.body())
        except ValueError as exc:
            return runpod_error(400, f"The request body is not valid JSON: {exc}")
        try:
            limits = request_limits(body)
        except ValueError as exc:
            return runpod_error(400, str(exc))
        return await job_call(endpoint_id, "submit", body["input"], sync=sync, **limits)

    @app.post("/v2/{endpoint_id}/run")
    async def run(endpoint_id: str, request: Request) -> Any:
        return await submit(endpoint_id, request, sync=False)

    @app.post("/v2/{endpoint_id}/runsync")
    async def runsync(endpoint_id: str, request: Request, wait: int | None = None) -> Any:
        """Wait up to RUNSYNC_TIMEOUT_S (or `wait` ms) for the job; then its id to poll."""
        submitted = await submit(endpoint_id, request, sync=True)
        if isinstance(submitted, Response):
            return submitted
        timeout_s = wait / 1000 if wait is not None else options.runsync_timeout_s
        waited = await job_call(endpoint_id, "wait", submitted["id"], max(0.0, timeout_s))
        return found(waited, submitted["id"])

    @app.get(STATUS_ROUTE)
    @app.post(STATUS_ROUTE)
    async def status(endpoint_id: str, job_id: str) -> Any:
        return found(await job_call(endpoint_id, "status", job_id), job_id)

    @app.get(STREAM_ROUTE)
    @app.post(STREAM_ROUTE)
    async def stream(endpoint_id: str, job_id: str) -> Any:
        return found(await job_call(endpoint_id, "stream", job_id), job_id)

    @app.post("/v2/{endpoint_id}/cancel/{job_id}")
    async def cancel(endpoint_id: str, job_id: str) -> Any:
        return found(await job_call(endpoint_id, "cancel", job_id), job_id)

    @app.post("/v2/{endpoint_id}/purge-queue")
    async def purge_queue(endpoint_id: str) -> Any:
        return await job_call(endpoint_id, "purge")

    @app.get("/v2/{endpoint_id}/health")
    async def runpod_health(endpoint_id: str) -> Any:
        return await job_call(endpoint_id, "health")

    app.openapi = lambda: _openapi_with_request_bodies(app)  # type: ignore[method-assign]

    # ---------------------------------------------------------------- health
    @app.get("/health")
    async def health() -> JSONResponse:
        healthy, details = await backend.health()
        body = {"status": "ok" if healthy else "unavailable", **details}
        return JSONResponse(body, status_code=200 if healthy else 503)

    return app


def _openapi_with_request_bodies(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI description, with the request bodies the routes read themselves (raw, to
    keep pydantic off the token path): vLLM's request models for the OpenAI routes, worker-
    vllm's job input for RunPod's /run and /runsync. Built on first request (imports vLLM)."""
    if app.openapi_schema:
        return app.openapi_schema
    from fastapi.openapi.utils import get_openapi
    from pydantic.json_schema import models_json_schema
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest

    from .jobs.inputs import JobInput

    models = [ChatCompletionRequest, CompletionRequest, JobInput]
    _, definitions = models_json_schema(
        [(model, "validation") for model in models], ref_template="#/components/schemas/{model}"
    )
    schema = get_openapi(
        title=app.title, version="1", description=app.description, routes=app.routes
    )
    schema.setdefault("components", {}).setdefault("schemas", {}).update(definitions["$defs"])

    def ref(model: type) -> dict[str, Any]:
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    job = {
        "type": "object",
        "required": ["input"],
        "properties": {
            "input": ref(JobInput),
            "policy": {
                "type": "object",
                "properties": {
                    "executionTimeout": {"type": "integer", "minimum": 1},
                    "ttl": {"type": "integer", "minimum": 1},
                },
            },
        },
    }
    bodies = {
        "/chat/completions": ref(ChatCompletionRequest),
        "/completions": ref(CompletionRequest),
        "/run": job,
        "/runsync": job,
    }
    for path, item in schema["paths"].items():
        for suffix, body in bodies.items():  # "/chat/completions" before "/completions"
            if path.endswith(suffix) and "post" in item:
                item["post"]["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": body}},
                }
                break
    app.openapi_schema = schema
    return schema


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"Unknown route: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"Method {request.method} is not allowed on {request.url.path}"
        return _error_for_path(request.url.path, exc.status_code, message)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        """A bug, not bad input: logged with its traceback, answered without it."""
        logger.exception("%s %s failed", request.method, request.url.path)
        message = f"Internal error while serving the request ({type(exc).__name__})"
        return _error_for_path(request.url.path, 500, message)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"Invalid request: {loc}: {first.get('msg', 'invalid')}"
        if is_runpod_path(request.url.path):
            return runpod_error(400, message)
        return openai_error(400, message, param=loc)
