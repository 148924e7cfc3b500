"""The router ingress: with several models served, it answers HTTP (http/app.py) and sends each
request of the models' API to the LLM deployment that serves its `model`.

It reads only what routing needs (`model`, or `lora_name` for a runtime LoRA adapter), forwards
the raw request to an LLM replica's `http` (http/asgi.py) and passes the replica's answer through
untouched: a JSON body, or vLLM's SSE chunks, which the replica coalesces (everything produced
since the previous message goes in one) so a busy replica sends fewer, larger messages. Every
route of the models' API works this way: chat, completions, Responses, Anthropic messages,
embeddings, tokenize, LoRA loading. It imports neither vLLM nor its request models, so it
stays light on the token path.

With one model served there is no router: the LLM replicas answer HTTP themselves
(llm_server.py).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    RequestCancelledError,
)
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from serve_app import host
from serve_app.config.plan import IngressOptions, UnknownModelError
from serve_app.deployments import replicas
from serve_app.deployments.lora_sync import AdapterRegistry
from serve_app.http.app import build_http_app, error_response
from serve_app.http.asgi import HttpRequest, HttpStart, Receive, Scope, Send
from serve_app.http.errors import sse_error
from serve_app.http.model_api import read_body, replay, route_for
from serve_app.jobs.routes import job_routes
from serve_app.logs import get_logger

logger = get_logger(__name__)

MODELS_TIMEOUT_S = 10.0
MODELS_CACHE_S = 5.0
ADAPTERS_REFRESH_S = 1.0
STATE_POLL_S = 2.0
# Exceptions meaning "the replica serving this request went away".
_REPLICA_GONE = (RayActorError,)
# Routes that read a model's tokenizer: with several models, they must say which.
_TOKENIZER_ROUTES = ("/tokenize", "/detokenize", "/v1/messages/count_tokens")


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=1000)
@serve.ingress()
class Ingress:
    """The HTTP API in front of several LLM deployments."""

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
        self._cards: dict[str, tuple[float, list[dict[str, Any]]]] = {}
        self._adapters: dict[str, str] = {}  # runtime LoRA adapter -> deployment
        self._adapters_read = 0.0
        self._states: dict[str, dict[str, Any]] = {}
        self._poller = asyncio.create_task(self._poll_states())
        host.tune(options.host, engine=False, http=True)

    async def __serve_build_asgi_app__(self) -> FastAPI:
        return build_http_app(
            self._options,
            self.forward,
            self.health,
            routers=[job_routes(self._options, self._jobs)],
            models=self.model_cards,
        )

    async def _poll_states(self) -> None:
        """Keep the LLM deployments' states (running replicas) a few seconds fresh."""
        while True:
            try:
                self._states = await replicas.states(set(self._llms))
            except Exception as exc:  # the controller is restarting: keep the last view
                logger.warning("cannot read deployment states: %s", exc)
            await asyncio.sleep(STATE_POLL_S)

    async def _no_running_replica(self, deployment: str) -> bool:
        """True if the deployment has no running replica now (a cached zero is re-read: the
        cache may predate a replica that just started)."""
        state = self._states.get(deployment)
        if state is None or state["running_replicas"] > 0:
            return False
        try:
            self._states = await replicas.states(set(self._llms))
        except Exception:  # Serve's controller is restarting: try the deployment anyway
            return False
        state = self._states.get(deployment)
        return state is not None and state["running_replicas"] == 0

    async def _await_replica(self, path: str, deployment: str) -> Any:
        """With no running replica (scale from zero, replacement), wait a bounded time for one.

        The probe itself is a queued request, so Serve's autoscaler starts a replica for it.
        """
        if not await self._no_running_replica(deployment):
            return None
        timeout = self._options.replica_wait_timeout_s
        try:
            await asyncio.wait_for(self._llms[deployment].ready.remote(), timeout)
        except TimeoutError:
            return error_response(
                path,
                503,
                f"No replica of {deployment} became ready within {timeout:g} s "
                "(REPLICA_WAIT_TIMEOUT_S); it may still be starting, retry later",
            )
        except Exception as exc:
            return self._dispatch_error(path, exc, deployment)
        return None

    # ------------------------------------------------------------------ routing
    async def _runtime_adapter(self, name: str) -> str | None:
        """The deployment a runtime LoRA adapter was loaded into (lora_sync.py), from Ray's
        key-value store read at most every ADAPTERS_REFRESH_S."""
        if time.monotonic() - self._adapters_read > ADAPTERS_REFRESH_S:
            self._adapters_read = time.monotonic()
            app = serve.get_replica_context().app_name
            try:
                self._adapters = await asyncio.to_thread(AdapterRegistry.by_deployment, app)
            except Exception as exc:
                logger.warning("runtime LoRA adapters unavailable: %s", exc)
        return self._adapters.get(name)

    async def _deployments_for(
        self, method: str, path: str, body: bytes, form_model: str | None = None
    ) -> list[str]:
        """The deployments to try, in order (several only for a Responses id, which any of
        them may hold). UnknownModelError if the request names no served model. `model` is
        the JSON body's, or `form_model` (a form's, as audio uploads send it)."""
        try:
            payload = json.loads(body) if body and form_model is None else None
        except (ValueError, RecursionError):
            payload = None  # the first deployment's API names what is wrong with it
        if not isinstance(payload, dict):
            payload = {}
        if form_model is not None:
            payload = {"model": form_model}
        models = self._options.models
        if "model" in payload:
            try:
                return [models.deployment_for(payload["model"])]
            except UnknownModelError:
                if isinstance(payload["model"], str) and (
                    found := await self._runtime_adapter(payload["model"])
                ):
                    return [found]
                raise
        if isinstance(payload.get("lora_name"), str) and path.endswith("_lora_adapter"):
            found = await self._runtime_adapter(payload["lora_name"])
            if found or path.endswith("/unload_lora_adapter"):
                return [found or models.deployment_for(None)]
        needs_model = method == "POST" and (
            route_for(path).generates or path in _TOKENIZER_ROUTES or path.endswith("_adapter")
        )
        if needs_model:
            return [models.deployment_for(None)]  # one model: it; several: 400
        if path.startswith("/v1/responses/"):
            return list(self._llms)
        return [models.default_deployment or next(iter(self._llms))]

    async def forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI app: the request, answered by the LLM deployment of its `model`."""
        if scope["type"] != "http":  # WebSockets (vLLM's realtime API) need one model served
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1003})
            return
        path = scope["path"]
        body = await read_body(receive)
        if body is None:
            return  # the client went away
        try:
            model_field = await _form_model(scope, body)
            deployments = await self._deployments_for(scope["method"], path, body, model_field)
        except UnknownModelError as exc:
            await error_response(path, exc.status, str(exc), **exc.openai_fields())(
                scope, receive, send
            )
            return
        request = HttpRequest(
            scope["method"], path, body, scope.get("query_string", b""), list(scope["headers"])
        )
        for index, deployment in enumerate(deployments):
            if waited := await self._await_replica(path, deployment):
                await waited(scope, receive, send)
                return
            stream: DeploymentResponseGenerator = (
                self._llms[deployment].options(stream=True).http.remote(request)
            )
            try:
                start = await stream.__anext__()
            except BaseException as exc:
                stream.cancel()
                await self._dispatch_error(path, exc, deployment)(scope, receive, send)
                return
            if start.status == 404 and index + 1 < len(deployments):
                stream.cancel()
                continue  # a Responses id another deployment may hold
            await self._relay(path, start, stream, send)
            return

    async def _relay(
        self, path: str, start: HttpStart, stream: DeploymentResponseGenerator, send: Send
    ) -> None:
        """Pass the answer through; a stream whose replica goes away ends with an error event.

        When the client disconnects, the server cancels this task: cancelling the Serve call
        aborts the generation in the engine."""
        await send(
            {"type": "http.response.start", "status": start.status, "headers": start.headers}
        )
        try:
            async for chunk in stream:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as exc:
            if start.is_stream:
                gone = isinstance(exc, _REPLICA_GONE)
                if not gone:
                    logger.exception("stream failed")
                message = (
                    "The replica serving this stream died; retry"
                    if gone
                    else f"The stream failed ({type(exc).__name__})"
                )
                event = sse_error(path, 503 if gone else 500, message).encode()
                await send({"type": "http.response.body", "body": event, "more_body": True})
            else:
                logger.exception("answer failed")
        finally:
            stream.cancel()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _dispatch_error(self, path: str, exc: BaseException, deployment: str) -> Any:
        if isinstance(exc, asyncio.CancelledError | RequestCancelledError):
            raise exc
        if isinstance(exc, DeploymentUnavailableError):
            return error_response(
                path,
                503,
                f"No healthy engine for {deployment}: the deployment failed to start "
                "(see `serve status` and the replica logs)",
            )
        if isinstance(exc, BackPressureError):
            return error_response(path, 503, f"{deployment} is at capacity; retry later")
        if isinstance(exc, _REPLICA_GONE):
            return error_response(
                path, 503, f"The {deployment} replica serving this request died; retry shortly"
            )
        logger.exception("request to %s failed", deployment)
        message = f"Internal error while serving the request ({type(exc).__name__})"
        return error_response(path, 500, message)

    # ------------------------------------------------------------------ models and health
    async def _listing(self, deployment: str) -> list[dict[str, Any]]:
        stream = (
            self._llms[deployment]
            .options(stream=True)
            .http.remote(HttpRequest("GET", "/v1/models"))
        )
        try:
            start = await stream.__anext__()
            body = b"".join([chunk async for chunk in stream])
        finally:
            stream.cancel()
        if start.status != 200:
            raise RuntimeError(f"/v1/models answered {start.status}")
        return json.loads(body)["data"]

    async def model_cards(self) -> list[dict[str, Any]]:
        """vLLM's model cards from each deployment (runtime LoRA adapters included), kept
        MODELS_CACHE_S; from the plan while a deployment does not answer."""
        cards: list[dict[str, Any]] = []
        for deployment in self._llms:
            cached = self._cards.get(deployment)
            if cached and time.monotonic() - cached[0] < MODELS_CACHE_S:
                cards += cached[1]
                continue
            try:
                if await self._no_running_replica(deployment):
                    raise LookupError("no running replica")  # do not wake it just to list it
                listing = await asyncio.wait_for(self._listing(deployment), MODELS_TIMEOUT_S)
                self._cards[deployment] = (time.monotonic(), listing)
                cards += listing
            except Exception as exc:
                logger.warning("model list of %s unavailable: %s", deployment, exc)
                cards += (cached or (0.0, []))[1] or [
                    {"id": name, "object": "model", "created": self._started, "owned_by": "vllm"}
                    for name, target in self._options.models.routes.items()
                    if target == deployment
                ]
        return cards

    async def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy when every LLM deployment has a running replica."""
        try:
            states = await replicas.states(set(self._llms))
        except Exception as exc:  # Serve's controller is restarting
            return False, {"deployments": {}, "error": f"Serve's status unavailable: {exc}"}
        ready = bool(states) and all(s["running_replicas"] > 0 for s in states.values())
        return ready, {"deployments": states}


async def _form_model(scope: Scope, body: bytes) -> str | None:
    """`model` of a form body (multipart or urlencoded: audio uploads), or None."""
    headers = dict(scope.get("headers") or ())
    kind = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
    if kind not in (b"multipart/form-data", b"application/x-www-form-urlencoded"):
        return None
    from starlette.requests import Request

    try:
        form = await Request(scope, receive=replay(body, _no_more)).form()
    except Exception:
        return None  # the deployment's API names what is wrong with the form
    model = form.get("model")
    return model if isinstance(model, str) else None


async def _no_more() -> dict[str, Any]:
    return {"type": "http.disconnect"}
