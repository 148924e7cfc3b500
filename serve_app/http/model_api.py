"""The model's HTTP API: vLLM's routes behind this application's guarantees.

`ModelApi` wraps an engine's app (engine.protocol.Engine.app: every route `vllm serve` answers
for the model) and adds, on every route:

* generation slots: a request that runs the engine (chat, completions, Responses, Anthropic
  messages, embeddings, scores, ...) waits for one of MAX_CONCURRENCY slots, or gets 503 with
  Retry-After at once when MAX_QUEUED_REQUESTS already wait (admission.py); listing models,
  tokenizing and polls never wait behind generations;
* the protocol's own error shape: OpenAI's on OpenAI routes and vLLM's own, Anthropic's on
  `/v1/messages` (errors.py), whatever vLLM answered;
* OpenAI's published schemas: JSON answers of chat, completions, Responses, embeddings and
  models are conformed to them (conformance.py); in-stream error events too;
* what only fits one process is left out with a 404 that says why (EXCLUDED).

Streams pass through untouched but for one comparison per chunk; whole JSON answers of the
routes with a schema are parsed and written again once. The LLM deployment serves a
ModelApi as its HTTP app (one model), and runs requests through it for the router ingress and
for RunPod jobs (asgi.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from dataclasses import dataclass
from typing import Any

from serve_app.http.admission import GenerationSlots, Overloaded
from serve_app.http.asgi import ADMITTED, ASGIApp, Message, Receive, Scope, Send
from serve_app.http.conformance import conform
from serve_app.http.errors import Protocol, error_for, protocol_of, reshape

RETRY_AFTER_S = "5"


@dataclass(frozen=True)
class Route:
    generates: bool = False  # runs the engine: takes a generation slot
    schema: str | None = None  # OpenAI's schema of its JSON answer
    job: bool = False  # a RunPod job may wrap it (`openai_route`)


# vLLM's routes that need more than passing through. Any other route vLLM serves passes
# through with its errors shaped (tokenize, detokenize, version, load, ...).
ROUTES: dict[str, Route] = {
    "/v1/chat/completions": Route(True, "CreateChatCompletionResponse", job=True),
    "/v1/chat/completions/batch": Route(True, job=True),
    "/v1/completions": Route(True, "CreateCompletionResponse", job=True),
    "/v1/responses": Route(True, "Response", job=True),
    "/v1/messages": Route(True),
    "/v1/embeddings": Route(True, "CreateEmbeddingResponse", job=True),
    "/v1/models": Route(schema="ListModelsResponse", job=True),
    "/v1/score": Route(True, job=True),
    "/v1/rerank": Route(True, job=True),
    "/v1/audio/transcriptions": Route(True),
    "/v1/audio/translations": Route(True),
    "/v1/systemone": Route(True),
    "/pooling": Route(True),
    "/classify": Route(True),
    "/score": Route(True),
    "/rerank": Route(True),
    "/v2/embed": Route(True),
    "/v2/rerank": Route(True),
    "/generative_scoring": Route(True),
    "/invocations": Route(True),
    "/inference/v1/generate": Route(True),
    "/cohere/v2/chat": Route(True),  # with the cohere SDK and VLLM_ENABLE_COHERE_API=1
}
_RESPONSE_BY_ID = Route(schema="Response")  # GET /v1/responses/{id}, POST .../cancel
_PASS = Route()

# Routes of `vllm serve` this application leaves out, and why (README lists them).
_ELASTIC_EP = (
    "elastic expert parallelism resizes one engine in place; this application scales by "
    "replicas (MIN_REPLICAS, MAX_REPLICAS)"
)
EXCLUDED = {
    "/metrics": (
        "vLLM's metrics of every replica are on Ray's metrics endpoint of each node "
        "(series named ray_vllm_*), where one replica's /metrics behind the load balancer "
        "would show one of several"
    ),
    "/scale_elastic_ep": _ELASTIC_EP,
    "/is_scaling_elastic_ep": _ELASTIC_EP,
}

# OpenAI-shaped routes a RunPod job may name as `openai_route`.
JOB_ROUTES = tuple(path for path, route in ROUTES.items() if route.job)

# OpenAI's message roles. vLLM would pass any other role to the chat template, which most
# templates render as if it were valid, so a typo'd role silently changes the prompt.
CHAT_ROLES = ("system", "developer", "user", "assistant", "tool", "function")


_RESPONSE_ID = re.compile(r"^/v1/responses/[^/]+(?:/cancel)?$")


def route_for(path: str) -> Route:
    route = ROUTES.get(path)
    if route is not None:
        return route
    if _RESPONSE_ID.match(path) and path != "/v1/responses/render":
        return _RESPONSE_BY_ID
    return _PASS


def unknown_role(body: Any) -> str | None:
    """Why a chat request's messages name a role OpenAI does not have, or None."""
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list):
        return None  # vLLM names that problem
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in CHAT_ROLES:
            return (
                f"messages[{index}].role: {role!r} is not a valid role; expected one of "
                + ", ".join(CHAT_ROLES)
            )
    return None


def _json_response(status: int, payload: Any, headers: list[tuple[bytes, bytes]] | None = None):
    body = json.dumps(payload).encode()
    kept = [
        (k, v) for k, v in headers or [] if k.lower() not in (b"content-length", b"content-type")
    ]
    kept.append((b"content-type", b"application/json"))
    if status in (429, 503) and not any(k.lower() == b"retry-after" for k, _ in kept):
        kept.append((b"retry-after", RETRY_AFTER_S.encode()))
    kept.append((b"content-length", str(len(body)).encode()))
    start = {"type": "http.response.start", "status": status, "headers": kept}
    return start, {"type": "http.response.body", "body": body}


async def send_error(send: Send, protocol: Protocol, status: int, message: str, **kw: Any) -> None:
    start, body = _json_response(status, error_for(protocol, status, message, **kw))
    await send(start)
    await send(body)


async def read_body(receive: Receive) -> bytes | None:
    """The request's whole body; None if the client went away first."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """`receive` for an app, after the body was read here: the body, then the client's own."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


_ERROR_EVENT = b'data: {"error"'


def _shaping(send: Send, protocol: Protocol, schema: str | None) -> Send:
    """`send` that gives error answers `protocol`'s shape, conforms JSON answers to `schema`,
    and in-stream error events to OpenAI's error shape."""
    held: list[Message] = []  # the start of an answer rewritten once its body is whole
    body: list[bytes] = []
    mode = "pass"

    async def shaped(message: Message) -> None:
        nonlocal mode
        kind = message["type"]
        if kind == "http.response.start":
            status = message["status"]
            headers = message.get("headers", [])
            ctype = next((v for k, v in headers if k.lower() == b"content-type"), b"")
            if ctype.startswith(b"text/event-stream"):
                mode = "stream" if protocol == "openai" else "pass"
            elif status >= 400 or (status == 200 and schema and b"json" in ctype):
                mode = "rewrite"
                held.append(message)
                return
            await send(message)
            return
        if kind != "http.response.body" or mode == "pass":
            await send(message)
            return
        chunk = message.get("body", b"")
        if mode == "stream":
            if chunk.startswith(_ERROR_EVENT):
                message = {**message, "body": _conform_error_events(chunk)}
            await send(message)
            return
        body.append(chunk)
        if message.get("more_body", False):
            return
        start = held[0]
        status = start["status"]
        try:
            payload = json.loads(b"".join(body))
        except ValueError:
            payload = None
        if status >= 400:
            text = b"".join(body).decode(errors="replace")
            document = reshape(protocol, status, payload if payload is not None else text)
        elif payload is not None:
            document = conform(payload, schema) if schema else payload
        else:  # not JSON after all: as it was
            await send(start)
            await send({"type": "http.response.body", "body": b"".join(body)})
            return
        new_start, new_body = _json_response(status, document, start.get("headers"))
        await send(new_start)
        await send(new_body)

    return shaped


def _conform_error_events(chunk: bytes) -> bytes:
    """vLLM's in-stream error events, with OpenAI's error shape (string `code`)."""
    events = []
    for event in chunk.split(b"\n\n"):
        if event.startswith(_ERROR_EVENT):
            try:
                payload = json.loads(event.removeprefix(b"data: "))
                event = b"data: " + json.dumps(reshape("openai", None, payload)).encode()
            except ValueError:
                pass
        events.append(event)
    return b"\n\n".join(events)


# `"n": <digits>` anywhere in a body: only then is a body not parsed already read whole.
_N_FIELD = re.compile(rb'"n"\s*:\s*"?\s*(\d+)')  # 1000, 1000.0 and "1000" (vLLM takes all)
MAX_N = 128  # OpenAI's own limit on `n`


def too_many_choices(payload: Any, max_n: int) -> str | None:
    """Why the request's `n` is refused, or None."""
    n = payload.get("n") if isinstance(payload, dict) else None
    if isinstance(n, str | float) and not isinstance(n, bool):
        try:
            n = float(n)  # as vLLM's request models coerce it
        except ValueError:
            return None  # vLLM names what is wrong with it
    if isinstance(n, int | float) and not isinstance(n, bool) and n > max_n:
        return (
            f"n={n:g} asks for more choices than this server generates per request ({max_n}, "
            "MAX_N); send several requests instead"
        )
    return None


def _n_problem(body: bytes, max_n: int) -> str | None:
    for match in _N_FIELD.finditer(body):
        if int(match.group(1)) > max_n:
            try:
                return too_many_choices(json.loads(body), max_n)
            except (ValueError, RecursionError):
                return None  # vLLM names what is wrong with the body
    return None


class ModelApi:
    """An engine's HTTP API with generation slots, protocol error shapes and OpenAI's schemas."""

    def __init__(self, app: ASGIApp, slots: GenerationSlots, max_n: int = MAX_N):
        self.app = app
        self.slots = slots
        self.max_n = max_n

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        protocol = protocol_of(path)
        if path in EXCLUDED:
            reason = EXCLUDED[path]
            await send_error(send, protocol, 404, f"{path} is not served here: {reason}")
            return
        route = route_for(path)
        generates = route.generates and scope["method"] == "POST"
        client = receive  # after the body: only the client's disconnect
        if generates or (path == "/v1/chat/completions" and scope["method"] == "POST"):
            # The whole body first: a slot is not held while it uploads, and bad roles are
            # refused before the engine (or the waiting line) sees them.
            body = await read_body(receive)
            if body is None:
                return
            param, problem = "n", _n_problem(body, self.max_n)
            if path == "/v1/chat/completions" and problem is None:
                try:
                    param, problem = "messages", unknown_role(json.loads(body))
                except (ValueError, RecursionError):
                    problem = None  # vLLM names what is wrong with the body
            if problem:
                await send_error(send, protocol, 400, problem, param=param)
                return
            receive = replay(body, receive)
        send = _shaping(send, protocol, route.schema)
        if not generates or scope.get(ADMITTED):
            await self.app(scope, receive, send)
            return
        slot = self.slots.slot()
        try:
            if not await _enter_unless_gone(slot, self.slots.free, client):
                return  # the client went away while it waited for a slot
        except Overloaded as exc:
            await send_error(send, protocol, 503, f"Overloaded, retry shortly: {exc}")
            return
        try:
            await self.app(scope, receive, send)
        finally:
            await slot.__aexit__(None, None, None)


async def _enter_unless_gone(slot: Any, free: bool, receive: Receive) -> bool:
    """Take the slot; while it has to wait, watch for the client's disconnect, which takes it
    out of the line (False). Overloaded when the line is full."""
    if free:
        await slot.__aenter__()
        return True
    entering = asyncio.ensure_future(slot.__aenter__())
    gone = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait({entering, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not entering.done():
            entering.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await entering
    if entering.cancelled():
        return False
    entering.result()  # Overloaded
    return True


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
