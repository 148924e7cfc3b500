"""HAProxy's ingress request router for one model served by several replicas (ROUTING_POLICY).

With one model, the LLM replicas are the HTTP ingress and Serve's HAProxy sends each request
straight to one of them. Before it sends a POST, HAProxy asks this deployment which replica:
`POST /internal/route` with the request's body (RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY)
and its `x-session-id` header, answered `{"replica_id": ...}`. The pick is the LLM deployment's
own request router (serve_app/routing/serve_router.py) run through a handle without sending
anything, so the request and its stream then go from HAProxy to the replica: one small hop per
request, none per token. Other methods (GET /v1/models, /health) stay on HAProxy's leastconn.
"""

from __future__ import annotations

import asyncio
import json

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.logs import get_logger
from serve_app.routing.serve_router import ROUTE_ONLY, SESSION

logger = get_logger(__name__)

SESSION_HEADER = "x-session-id"  # Ray's RAY_SERVE_SESSION_ID_HEADER_KEY default
# HAProxy gives up on the router after its own timeout (RAY_SERVE_HAPROXY_INGRESS_REQUEST_ROUTER_
# TIMEOUT_S, 5 s) and answers 503; this answers first, saying why.
PICK_TIMEOUT_S = 4.0

app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)


@serve.ingress(app)
class RoutePicker:
    """Picks the LLM replica of each HTTP request for HAProxy (one model, several replicas)."""

    def __init__(self, llm: DeploymentHandle):
        self._llm = llm
        self._warned_truncated = False

    @app.post("/internal/route")
    async def route(self, request: Request) -> JSONResponse:
        raw = await request.body()
        body = None
        if raw and "x-body-truncated" not in request.headers:
            try:
                body = json.loads(raw)
            except ValueError:
                body = None  # not JSON: the replica answers it; any replica will do
        elif raw and not self._warned_truncated:
            self._warned_truncated = True
            logger.warning(
                "HAProxy forwarded a truncated body (%s bytes); such requests are routed by "
                "load only. Raise RAY_SERVE_HAPROXY_INGRESS_REQUEST_ROUTER_BUFSIZE to route "
                "them by prefix.",
                request.headers.get("x-body-truncated"),
            )
        kwargs: dict[str, object] = {"_reserve": False, ROUTE_ONLY: True}
        session = request.headers.get(SESSION_HEADER)
        if session:
            kwargs[SESSION] = session
        args = (body,) if isinstance(body, dict) else ()
        try:
            async with asyncio.timeout(PICK_TIMEOUT_S):
                async with self._llm.choose_replica(*args, **kwargs) as selection:
                    replica_id = selection._replica.replica_id.to_full_id_str()
        except TimeoutError:
            return _unavailable(f"no replica could be picked within {PICK_TIMEOUT_S:.0f} s")
        except Exception as exc:  # HAProxy answers any non-200 with 503
            logger.warning("routing failed: %s: %s", type(exc).__name__, exc)
            return _unavailable(f"{type(exc).__name__}: {exc}")
        return JSONResponse({"replica_id": replica_id})


def _unavailable(reason: str) -> JSONResponse:
    return JSONResponse({"detail": f"no LLM replica available: {reason}"}, status_code=503)
