"""HTTP writes of an ingress replica, coalesced per event-loop tick (COALESCE_HTTP_WRITES).

Each step of the engine wakes every running stream's coroutine in one tick of the replica's
event loop, and each writes its chunk to its own connection: 32 streams, 32 writes spread
over the tick, each waking the reader on the other end (Serve's HAProxy, then the client)
for that one chunk. Held until the tick ends and written together, the step's chunks leave
in one burst, and HAProxy forwards them in a few wake-ups instead of one per chunk
(docs/benchmarks, decision 22).

No stream waits for another token: a chunk is held for the rest of the tick it was written
in (what is left of the engine step's output processing) and never longer, and the writes of
one connection keep their order. This is flush consolidation as Netty's
`FlushConsolidationHandler` does it, not the token batching of worker-vllm's job streams.

Serve starts the replica's HTTP server (uvicorn) itself, so the one place to reach its
connections is uvicorn's protocol: `install()` wraps each new connection's transport. Flow
control stays with the real transport (uvicorn pauses on its buffer, which is at most one
tick behind).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import weakref
from typing import Any

from serve_app.logs import get_logger

logger = get_logger(__name__)


class _TickBatch:
    """The writes of one event loop's tick, written at the start of the next (one per loop,
    used from that loop's thread only)."""

    def __init__(self) -> None:
        self._pending: dict[asyncio.Transport, list[bytes]] = {}
        self._scheduled = False

    def add(self, transport: asyncio.Transport, data: bytes) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)
        self._pending.setdefault(transport, []).append(data)

    def flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, {}
        for transport, chunks in pending.items():
            _write(transport, chunks)

    def flush_one(self, transport: asyncio.Transport) -> None:
        if chunks := self._pending.pop(transport, None):
            _write(transport, chunks)

    def drop(self, transport: asyncio.Transport) -> None:
        self._pending.pop(transport, None)


def _write(transport: asyncio.Transport, chunks: list[bytes]) -> None:
    """What a direct write would have done: a connection closed since is skipped."""
    if transport.is_closing():
        return
    try:
        transport.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))
    except Exception as exc:  # one broken connection must not hold up the others' writes
        logger.debug("write to a closed connection dropped: %s", exc)


_batches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _TickBatch] = (
    weakref.WeakKeyDictionary()
)


def _batch_of(loop: asyncio.AbstractEventLoop) -> _TickBatch:
    if (batch := _batches.get(loop)) is None:
        batch = _batches[loop] = _TickBatch()
    return batch


class CoalescingTransport:
    """A connection's transport whose writes leave at the end of the event loop's tick; the
    rest of the transport's interface is the real one's."""

    __slots__ = ("_batch", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self._transport = transport
        self._batch = _batch_of(loop)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if data:
            self._batch.add(self._transport, bytes(data))

    def writelines(self, lines: Any) -> None:
        self.write(b"".join(lines))

    def close(self) -> None:
        self._batch.flush_one(self._transport)
        self._transport.close()

    def abort(self) -> None:
        self._batch.drop(self._transport)
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _protocol_classes() -> list[type]:
    """uvicorn's HTTP/1.1 protocols (httptools when installed, else h11): each sets
    `self.transport` in `connection_made`, and writes through it."""
    classes = []
    for module, name in (
        ("uvicorn.protocols.http.httptools_impl", "HttpToolsProtocol"),
        ("uvicorn.protocols.http.h11_impl", "H11Protocol"),
    ):
        with contextlib.suppress(ImportError):
            classes.append(getattr(importlib.import_module(module), name))
    return classes


def install() -> bool:
    """Coalesce the writes of every HTTP connection this process's uvicorn servers accept from
    now on. Idempotent; False (and a warning) if neither of uvicorn's HTTP/1.1 protocols can
    be imported. (tests/test_write_coalescing.py fails if uvicorn stops setting the transport
    where this expects it.)"""
    classes = _protocol_classes()
    if not classes:
        logger.warning("COALESCE_HTTP_WRITES: uvicorn's HTTP protocols not found; writes as is")
        return False
    for cls in classes:
        original = cls.connection_made
        if getattr(original, "coalescing", False):
            continue

        def connection_made(self: Any, transport: asyncio.Transport, _original=original) -> None:
            _original(self, transport)
            if getattr(self, "transport", None) is transport:
                self.transport = CoalescingTransport(transport, asyncio.get_running_loop())

        connection_made.coalescing = True  # type: ignore[attr-defined]
        cls.connection_made = connection_made
    return True
