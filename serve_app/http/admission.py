"""Admission of generations into one engine: MAX_CONCURRENCY run at once, up to
MAX_QUEUED_REQUESTS more wait their turn (first come, first served), the rest are refused at
once (the caller answers 503 with Retry-After). RunPod jobs do not wait in a replica's line:
they wait in the job queue, which offers them again when capacity frees, so a job goes to
whichever replica has room (a replica that just started, too).

The limit is the replica's own, not Serve's `max_ongoing_requests`: with one model the LLM
replicas answer every HTTP route themselves, and a replica busy with generations must still
answer /health, /v1/models and RunPod's status polls at once. So Serve admits generations and
those short requests alike (its limit sits above this one, config.plan.CONTROL_HEADROOM more)
and this decides which wait.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class Overloaded(Exception):
    """No generation slot free and the waiting line is full."""


class GenerationSlots:
    def __init__(self, concurrency: int, queue: int):
        self._concurrency = concurrency
        self._queue = queue
        self._slots = asyncio.Semaphore(concurrency)
        self._running = 0
        self._waiting = 0

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def free(self) -> bool:
        """A slot is free now: taking one will not wait."""
        return not self._slots.locked()

    @contextlib.asynccontextmanager
    async def slot(self, wait: bool = True) -> AsyncIterator[None]:
        """Hold one generation slot; Overloaded at once if it would have to queue past the
        line's limit (or queue at all, without `wait`). Cancelling a waiting caller takes it
        out of the line."""
        if self._slots.locked() and (not wait or self._waiting >= self._queue):
            raise Overloaded(
                f"this replica is at capacity: {self._concurrency} generations running "
                f"(MAX_CONCURRENCY) and {self._waiting} waiting (MAX_QUEUED_REQUESTS)"
            )
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        self._running += 1
        try:
            yield
        finally:
            self._running -= 1
            self._slots.release()
