"""Stream helpers for the token path between processes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


async def coalesce(source: AsyncIterator[str]) -> AsyncIterator[str]:
    """Yield everything `source` produced since the previous yield, joined into one string.

    Nothing waits to fill a batch: the first chunk goes out at once, and chunks only merge
    when they arrive while the consumer is still busy with the previous one. Crossing a Ray
    Serve deployment handle costs about as much per message as an engine step, so a stream
    that falls behind catches up in fewer, larger messages instead of lagging further.
    Closing this generator stops `source` (which aborts its request in the engine).
    """
    pending: list[str] = []
    ready = asyncio.Event()
    finished = False
    failure: BaseException | None = None

    async def pump() -> None:
        nonlocal finished, failure
        try:
            async for chunk in source:
                pending.append(chunk)
                ready.set()
        except Exception as exc:
            failure = exc
        finally:
            finished = True
            ready.set()

    task = asyncio.create_task(pump())
    try:
        while True:
            if pending:
                joined = "".join(pending)
                pending.clear()
                yield joined
            elif finished:
                if failure is not None:
                    raise failure
                return
            else:
                ready.clear()  # no await since the checks above: nothing can be missed
                await ready.wait()
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):
            await source.aclose()  # type: ignore[attr-defined]
