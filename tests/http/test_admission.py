"""Generation slots of a replica (serve_app/http/admission.py): pure asyncio, no engine."""

from __future__ import annotations

import asyncio

import pytest

from serve_app.http.admission import GenerationSlots, Overloaded
from tests.conftest import reached


async def hold(slots: GenerationSlots, started: list[int], i: int, release: asyncio.Event):
    async with slots.slot():
        started.append(i)
        await release.wait()


def test_slots_run_the_limit_queue_in_order_and_refuse_past_the_line():
    async def scenario():
        slots = GenerationSlots(concurrency=2, queue=2)
        release = [asyncio.Event() for _ in range(4)]
        started: list[int] = []
        tasks = [asyncio.create_task(hold(slots, started, i, release[i])) for i in range(4)]
        await asyncio.sleep(0)
        assert (started, slots.running, slots.waiting) == ([0, 1], 2, 2)
        with pytest.raises(Overloaded, match="2 generations running"):
            async with slots.slot():
                pass
        release[1].set()
        await reached(lambda: len(started) == 3)
        assert started == [0, 1, 2]  # first come, first served
        for event in release:
            event.set()
        await asyncio.gather(*tasks)
        assert (slots.running, slots.waiting) == (0, 0)

    asyncio.run(scenario())


def test_a_cancelled_waiter_leaves_the_line_and_takes_no_slot():
    async def scenario():
        slots = GenerationSlots(concurrency=1, queue=1)
        release = asyncio.Event()
        started: list[int] = []
        first = asyncio.create_task(hold(slots, started, 0, release))
        second = asyncio.create_task(hold(slots, started, 1, asyncio.Event()))
        await asyncio.sleep(0)
        assert slots.waiting == 1
        second.cancel()
        await asyncio.sleep(0)
        assert slots.waiting == 0
        release.set()
        await first
        assert (started, slots.running) == ([0], 0)
        async with slots.slot():  # the slot is free again
            assert slots.running == 1

    asyncio.run(scenario())


def test_without_wait_a_caller_is_refused_instead_of_queued():
    async def scenario():
        slots = GenerationSlots(concurrency=1, queue=10)
        async with slots.slot(wait=False):
            with pytest.raises(Overloaded):
                async with slots.slot(wait=False):
                    pass
            assert slots.waiting == 0
        async with slots.slot(wait=False):  # free again
            assert slots.running == 1

    asyncio.run(scenario())
