"""Coalescing a stream for a hop between processes (serve_app/streams.py): pure asyncio."""

from __future__ import annotations

import asyncio

import pytest

from serve_app.streams import coalesce
from tests.conftest import reached


async def chunks(items: list[str], gaps: list[float], closed: list[bool] | None = None):
    try:
        for item, gap in zip(items, gaps, strict=True):
            await asyncio.sleep(gap)
            yield item
    finally:
        if closed is not None:
            closed.append(True)


def test_the_first_chunk_goes_at_once_and_a_busy_consumer_gets_the_rest_joined():
    async def scenario():
        out, source_done = [], []
        stream = coalesce(chunks(["a", "b", "c", "d"], [0, 0.001, 0.001, 0.001], source_done))
        out.append(await anext(stream))
        await reached(lambda: source_done)  # the consumer is busy: b, c, d arrive meanwhile
        out += [item async for item in stream]
        return out

    assert asyncio.run(scenario()) == ["a", "bcd"]


def test_a_quick_consumer_gets_every_chunk_alone_in_order():
    async def scenario():
        return [c async for c in coalesce(chunks(["a", "b", "c"], [0.01, 0.01, 0.01]))]

    assert asyncio.run(scenario()) == ["a", "b", "c"]


def test_errors_arrive_after_what_came_before_them():
    async def failing():
        yield "a"
        raise ValueError("engine died")

    async def scenario():
        seen = []
        with pytest.raises(ValueError, match="engine died"):
            async for item in coalesce(failing()):
                seen.append(item)
        return seen

    assert asyncio.run(scenario()) == ["a"]


def test_closing_the_coalesced_stream_closes_the_source():
    async def scenario():
        closed: list[bool] = []
        stream = coalesce(chunks(["a"] * 100, [0.01] * 100, closed))
        await anext(stream)
        await stream.aclose()
        await asyncio.sleep(0)
        return closed

    assert asyncio.run(scenario()) == [True]
