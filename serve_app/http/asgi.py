"""One HTTP request run through an ASGI app in this process, its answer streamed back.

How the router ingress and the job queue reach an LLM replica's HTTP API over a deployment
handle, and how a job runs its OpenAI request: the caller sends an `HttpRequest`, the replica
runs it through its app (`call`) and yields an `HttpStart`, then the body. Body chunks the app
sends while the previous one is still on its way travel together, so a replica that is ahead of
its consumer sends fewer, larger messages (crossing a handle costs about an engine step per
message) and nothing waits to fill a batch. Closing the generator tells the app its client
went away (before the answer starts, vLLM's routes need that; it waits up to
DISCONNECT_GRACE_S for them) and cancels its task, which aborts the request in the engine.

Written here because the ASGI clients that exist (httpx's ASGITransport, Starlette's
TestClient) read a whole response before returning it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Set in a request's scope by callers that hold a generation slot for it already (a job).
ADMITTED = "serve_app.admitted"
# How long an app that has not answered yet gets to end a request its caller abandoned.
DISCONNECT_GRACE_S = 2.0


@dataclass
class HttpRequest:
    """An HTTP request, as it crosses a deployment handle."""

    method: str
    path: str
    body: bytes = b""
    query_string: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    @classmethod
    def json(cls, path: str, body: bytes, method: str = "POST") -> HttpRequest:
        return cls(method, path, body, headers=[(b"content-type", b"application/json")])

    def scope(self, **extra: Any) -> dict[str, Any]:
        headers = [(k.lower(), v) for k, v in self.headers if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(self.body)).encode()))
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "method": self.method,
            "scheme": "http",
            "path": self.path,
            "raw_path": self.path.encode(),
            "root_path": "",
            "query_string": self.query_string,
            "headers": headers,
            "client": ("127.0.0.1", 0),
            "server": ("127.0.0.1", 0),
            "state": {},
            **extra,
        }


@dataclass
class HttpStart:
    """The head of an answer."""

    status: int
    headers: list[tuple[bytes, bytes]]

    def header(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k.lower() == name), None)

    @property
    def is_stream(self) -> bool:
        return (self.header(b"content-type") or b"").startswith(b"text/event-stream")


async def call(
    app: ASGIApp, request: HttpRequest, **scope: Any
) -> AsyncIterator[HttpStart | bytes]:
    """Run `request` through `app`: yields the HttpStart, then body chunks (everything sent
    since the previous yield, joined). `scope` adds keys to the request's scope."""
    pending: list[Message] = []
    ready = asyncio.Event()
    disconnected = asyncio.Event()
    body_sent = False

    async def receive() -> Message:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        await disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        pending.append(message)
        ready.set()

    async def run() -> None:
        try:
            await app(request.scope(**scope), receive, send)
        finally:
            ready.set()

    task = asyncio.create_task(run())
    started = finished = False
    try:
        while not finished:
            if not pending:
                if task.done():
                    task.result()  # the app's exception, if it raised one
                    if not started:
                        raise RuntimeError("the app ended without answering")
                    return
                ready.clear()  # no await since the checks above: nothing can be missed
                await ready.wait()
                continue
            messages, pending[:] = list(pending), []
            chunks = []
            for message in messages:
                if message["type"] == "http.response.start":
                    started = True
                    yield HttpStart(message["status"], list(message.get("headers", [])))
                elif message["type"] == "http.response.body":
                    chunks.append(message.get("body", b""))
                    finished = finished or not message.get("more_body", False)
            if any(chunks):
                yield b"".join(chunks)
    finally:
        if finished:  # answered: let the app finish its own clean-up
            task.add_done_callback(_retrieve)
        else:  # the consumer went away: tell the app, as a server would, then stop it
            disconnected.set()
            try:
                if not started:
                    # vLLM's routes run their handler in a task of its own until it answers,
                    # which only the disconnect cancels (cancelling the app leaves it running).
                    await asyncio.wait({task}, timeout=DISCONNECT_GRACE_S)
            finally:
                task.cancel()
                task.add_done_callback(_retrieve)


def _retrieve(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: an error after the answer was sent is not news


async def read(app: ASGIApp, request: HttpRequest, **scope: Any) -> tuple[HttpStart, bytes]:
    """The whole answer to `request` (for answers that are not streams)."""
    answer = call(app, request, **scope)
    start = await anext(answer)
    assert isinstance(start, HttpStart)
    body = b"".join([chunk async for chunk in answer])  # type: ignore[misc]
    return start, body
