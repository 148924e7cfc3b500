"""HTTP writes coalesced per event-loop tick (serve_app/host/write_coalescing.py): real transports
on socket pairs, on asyncio's loop and on uvloop (the loop of Ray's replicas), and a real
uvicorn server streaming to real clients."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Coroutine
from typing import Any

import httpx
import pytest
import uvicorn
import uvloop
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from serve_app.host import write_coalescing
from serve_app.host.write_coalescing import CoalescingTransport
from tests.conftest import reached

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def run_on(loop_name: str, scenario: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    loop = LOOPS[loop_name]()
    try:
        return loop.run_until_complete(asyncio.wait_for(scenario(), 30))
    finally:
        loop.close()


async def connection() -> tuple[CoalescingTransport, asyncio.Transport, socket.socket]:
    """A coalescing transport over a real one, and the socket at the other end."""
    ours, peer = socket.socketpair()
    peer.setblocking(False)
    transport, _ = await asyncio.get_running_loop().create_connection(asyncio.Protocol, sock=ours)
    return CoalescingTransport(transport, asyncio.get_running_loop()), transport, peer


def received(peer: socket.socket) -> bytes:
    try:
        return peer.recv(65536)
    except BlockingIOError:
        return b""


def closed_after(peer: socket.socket, data: bytearray) -> bool:
    """Collects what `peer` receives; True once the other end has closed."""
    try:
        chunk = peer.recv(65536)
    except BlockingIOError:
        return False
    data += chunk
    return not chunk


@pytest.mark.parametrize("loop_name", LOOPS)
def test_the_writes_of_a_tick_leave_together_when_it_ends_in_order(loop_name):
    async def scenario():
        (first, _, first_peer), (second, _, second_peer) = await connection(), await connection()
        first.write(b"data: a\n\n")
        second.write(b"data: x\n\n")
        first.write(b"data: b\n\n")
        held = received(first_peer), received(second_peer)
        await asyncio.sleep(0)  # the tick ends
        return held, received(first_peer), received(second_peer)

    held, first, second = run_on(loop_name, scenario)
    assert held == (b"", b"")  # nothing left during the tick
    assert (first, second) == (b"data: a\n\ndata: b\n\n", b"data: x\n\n")


@pytest.mark.parametrize("loop_name", LOOPS)
def test_close_writes_what_is_held_first(loop_name):
    async def scenario():
        ours, _, peer = await connection()
        ours.write(b"0\r\n\r\n")
        ours.close()
        data = bytearray()
        await reached(lambda: closed_after(peer, data))
        return bytes(data)

    assert run_on(loop_name, scenario) == b"0\r\n\r\n"


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_connection_closed_within_the_tick_is_skipped_and_the_others_written(loop_name):
    async def scenario():
        (gone, real, _), (kept, _, kept_peer) = await connection(), await connection()
        gone.write(b"lost")
        kept.write(b"kept")
        real.close()  # the client went away before the tick ended
        await asyncio.sleep(0)
        return received(kept_peer)

    assert run_on(loop_name, scenario) == b"kept"


@pytest.mark.parametrize("loop_name", LOOPS)
def test_abort_drops_what_is_held(loop_name):
    async def scenario():
        ours, _, peer = await connection()
        ours.write(b"never")
        ours.abort()
        await asyncio.sleep(0.05)
        return received(peer)

    assert run_on(loop_name, scenario) == b""


async def streaming_app(scope, receive, send):
    """Server-sent events, five per request, a tick apart."""
    assert scope["type"] == "http"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/event-stream")]})  # fmt: skip
    for index in range(5):
        await send({"type": "http.response.body", "body": f"data: {index}\n\n".encode(),
                    "more_body": True})  # fmt: skip
        await asyncio.sleep(0)
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_installed_a_uvicorn_server_streams_every_response_whole(monkeypatch, http):
    """What the replica runs: uvicorn (on uvloop, as in Ray) with the writes of every accepted
    connection coalesced; fails if uvicorn stops setting its protocol's transport where
    install() expects it."""
    for cls in (HttpToolsProtocol, H11Protocol):  # undone after the test
        monkeypatch.setattr(cls, "connection_made", cls.connection_made)
    assert write_coalescing.install()
    assert write_coalescing.install()  # idempotent: connections are wrapped once

    async def scenario():
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(streaming_app, http=http, lifespan="off", log_level="warning")
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            await reached(lambda: server.started)
            transports = []

            async def stream(client: httpx.AsyncClient) -> str:
                async with client.stream("GET", f"http://127.0.0.1:{port}/") as response:
                    protocols = server.server_state.connections
                    transports.extend(type(p.transport) for p in protocols)
                    return "".join([text async for text in response.aiter_text()])

            async with httpx.AsyncClient(timeout=10) as client:
                bodies = await asyncio.gather(*(stream(client) for _ in range(4)))
            return bodies, transports
        finally:
            server.should_exit = True
            await serving

    bodies, transports = run_on("uvloop", scenario)
    expected = "".join(f"data: {index}\n\n" for index in range(5)) + "data: [DONE]\n\n"
    assert bodies == [expected] * 4
    assert transports and set(transports) == {CoalescingTransport}
