"""The HTTP app of an ingress replica: the model's API, RunPod's job API and /health.

`build_http_app` builds one FastAPI app around the model's API (an ASGI app):

* in the LLM replica itself when one model is served (deployments/llm_server.py): the
  replica's model API (model_api.py over vLLM's routers) runs in the same process, as in
  `vllm serve`;
* in the router ingress when several are (deployments/ingress.py), which forwards each
  request by `model`.

Every route `vllm serve` answers is served under `/v1/...` (and vLLM's own paths such as
`/tokenize`); the `/v1/...` ones also under RunPod's base URLs `/openai/v1/...` and
`/v2/<endpoint_id>/openai/v1/...`. RunPod's job routes go to the job queue deployment. On every
route: API_KEY (as `Authorization: Bearer` or Anthropic's `x-api-key`), MAX_REQUEST_BYTES, and
errors in the protocol's own shape (errors.py). Streams leave as vLLM serialized them, so
nothing on the token path parses or re-encodes them.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve_app.config.plan import IngressOptions
from serve_app.http.asgi import ASGIApp, Receive, Scope, Send
from serve_app.http.errors import (
    error_for,
    http_error_message,
    protocol_of,
    split_openai_prefix,
)
from serve_app.http.model_api import RETRY_AFTER_S
from serve_app.logs import get_logger

logger = get_logger(__name__)

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

Health = Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]


def error_response(path: str, status: int, message: str, **kwargs: Any) -> JSONResponse:
    """An error in the shape of the protocol `path` belongs to; overload and unavailability
    say when to retry (the OpenAI and Anthropic SDKs honour Retry-After)."""
    headers = {"Retry-After": RETRY_AFTER_S} if status in (429, 503) else None
    body = error_for(protocol_of(path), status, message, **kwargs)
    return JSONResponse(body, status_code=status, headers=headers)


class ApiKeyMiddleware:
    """With API_KEY set, every route but GET /health needs the key: `Authorization: Bearer
    <key>` (OpenAI's and RunPod's SDKs) or `x-api-key: <key>` (Anthropic's), WebSockets
    included. A browser's CORS preflight (which carries no credentials by design) passes on,
    to be answered by vLLM's CORS settings on the model API's routes.

    Pure ASGI (no body wrapping on the token path); compares SHA-256 digests in constant time.
    """

    def __init__(self, asgi_app: ASGIApp, expected_sha256: str):
        self.app = asgi_app
        self.expected_sha256 = expected_sha256

    def _valid(self, key: bytes) -> bool:
        given = hashlib.sha256(key).hexdigest()
        return hmac.compare_digest(given, self.expected_sha256)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope.get("headers") or ())
        if (
            scope["type"] not in ("http", "websocket")
            or scope["path"] == "/health"
            or (scope.get("method") == "OPTIONS" and b"access-control-request-method" in headers)
        ):
            await self.app(scope, receive, send)
            return
        authorization = headers.get(b"authorization", b"")
        scheme, _, key = authorization.partition(b" ")
        bearer = key if scheme.lower() == b"bearer" else authorization
        if (authorization and self._valid(bearer)) or (
            b"x-api-key" in headers and self._valid(headers[b"x-api-key"])
        ):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": "invalid API key"})
            return
        message = (
            "Missing or invalid API key: send `Authorization: Bearer <API_KEY>` "
            "(or `x-api-key: <API_KEY>`)"
        )
        await error_response(scope["path"], 401, message)(scope, receive, send)


class BodyTooLarge(StarletteHTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"The request body is larger than MAX_REQUEST_BYTES ({limit} bytes)")


class BodyLimitMiddleware:
    """Bodies over MAX_REQUEST_BYTES get 413: at once when Content-Length says so, else as
    soon as that much has arrived (the route's error handler answers it)."""

    def __init__(self, asgi_app: ASGIApp, limit: int):
        self.app = asgi_app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or ()).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            error = BodyTooLarge(self.limit)
            await error_response(scope["path"], 413, error.detail)(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Any:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, limited_receive, send)


class OpenAIPrefixMiddleware:
    """`/openai/v1/...` and `/v2/<endpoint_id>/openai/v1/...` (RunPod's base URLs) serve what
    `/v1/...` serves; an endpoint id other than RUNPOD_ENDPOINT_ID (when set) gets 404."""

    def __init__(self, asgi_app: ASGIApp, endpoint_id: str | None):
        self.app = asgi_app
        self.endpoint_id = endpoint_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        split = split_openai_prefix(scope["path"]) if scope["type"] == "http" else None
        if split is None:
            await self.app(scope, receive, send)
            return
        path, endpoint = split
        if unknown := unknown_endpoint(endpoint, self.endpoint_id):
            await error_response(scope["path"], 404, unknown)(scope, receive, send)
            return
        scope = {**scope, "path": path, "raw_path": path.encode()}
        await self.app(scope, receive, send)


def unknown_endpoint(endpoint_id: str | None, expected: str | None) -> str | None:
    """Why a /v2/{endpoint_id}/... path is not this endpoint, or None."""
    if endpoint_id is None or expected is None or endpoint_id == expected:
        return None
    return f"Unknown endpoint {endpoint_id!r}: this deployment serves {expected!r}"


def build_http_app(
    options: IngressOptions,
    api: ASGIApp,
    health: Health,
    *,
    routers: Sequence[APIRouter] = (),
    openapi: Callable[[], dict[str, Any]] | None = None,
    models: Callable[[], Awaitable[list[dict[str, Any]]]] | None = None,
) -> FastAPI:
    """The FastAPI app of an ingress replica: /health and `routers` (RunPod's job API) here,
    every other route answered by `api` (the model's API). `openapi` describes `api`'s routes;
    `models`, if given, answers /v1/models instead of `api`."""
    app = FastAPI(
        title="ray-vllm-worker",
        description="OpenAI-, Anthropic- and RunPod-compatible LLM serving on Ray Serve and vLLM",
    )
    # Added last, runs first: the API key is checked before the body is read.
    app.add_middleware(OpenAIPrefixMiddleware, endpoint_id=options.endpoint_id)
    app.add_middleware(BodyLimitMiddleware, limit=options.max_request_bytes)
    if options.api_key_sha256:
        app.add_middleware(ApiKeyMiddleware, expected_sha256=options.api_key_sha256)
    _add_error_handlers(app)

    if models is not None:

        @app.get("/v1/models")
        async def list_models() -> JSONResponse:
            return JSONResponse({"object": "list", "data": await models()})

    for router in routers:
        app.include_router(router)

    @app.get("/health")
    async def health_route() -> JSONResponse:
        healthy, details = await health()
        body = {"status": "ok" if healthy else "unavailable", **details}
        return JSONResponse(body, status_code=200 if healthy else 503)

    app.openapi = lambda: _openapi(app, openapi)  # type: ignore[method-assign]
    # Every path none of the routes above has (Starlette's `default`, after its 405s for them):
    # the model's API.
    app.router.default = api
    return app


def _openapi(app: FastAPI, model_api: Callable[[], dict[str, Any]] | None) -> dict[str, Any]:
    """The OpenAPI description: this app's routes (a route's `openapi_extra` may bring schemas
    as `x-components`) and the model API's (vLLM's, with its request models). The routes under
    RunPod's OpenAI base URLs are those of /v1, not listed again."""
    if app.openapi_schema:
        return app.openapi_schema
    from fastapi.openapi.utils import get_openapi

    schema = get_openapi(
        title=app.title, version="1", description=app.description, routes=app.routes
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for item in schema["paths"].values():  # schemas a route's `openapi_extra` brought along
        for operation in item.values():
            components.update(operation.pop("x-components", {}))
    if model_api is not None:
        inner = model_api()
        for path, item in inner.get("paths", {}).items():
            if path not in schema["paths"] and path not in ("/health", "/metrics"):
                schema["paths"][path] = item
        for name, definition in inner.get("components", {}).get("schemas", {}).items():
            components.setdefault(name, definition)
    app.openapi_schema = schema
    return schema


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        path = request.url.path
        message = http_error_message(exc.status_code, exc.detail, request.method, path)
        return error_response(path, exc.status_code, message)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        """A bug, not bad input: logged with its traceback, answered without it."""
        logger.exception("%s %s failed", request.method, request.url.path)
        message = f"Internal error while serving the request ({type(exc).__name__})"
        return error_response(request.url.path, 500, message)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"Invalid request: {loc}: {first.get('msg', 'invalid')}"
        return error_response(request.url.path, 400, message, param=loc)
