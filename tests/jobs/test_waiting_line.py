"""The line of jobs waiting for a generation slot (serve_app/jobs/waiting_line.py)."""

from __future__ import annotations

import asyncio

from serve_app.jobs.waiting_line import WaitingLine
from tests.conftest import reached

LONG = 60.0  # a backoff no test waits out


async def settled() -> None:
    """Time for anything a bug would wrongly wake to run (a slow machine only makes this
    check weaker, never wrong)."""
    await asyncio.sleep(0.05)


def test_only_the_head_asks_and_the_others_follow_in_order():
    async def scenario():
        line = WaitingLine()
        asked: list[int] = []

        async def job(i: int) -> None:
            ticket = line.join()
            await ticket.turn(LONG)
            asked.append(i)
            await ticket.turn(LONG)  # no slot: waits for one to free
            asked.append(i)
            ticket.leave()

        tasks = [asyncio.create_task(job(i)) for i in range(3)]
        await reached(lambda: len(asked) == 1)
        await settled()
        assert asked == [0]  # the head asked once; 1 and 2 wait without asking
        line.capacity_freed()
        await reached(lambda: len(asked) == 3)
        await settled()
        assert asked == [0, 0, 1]  # 0 got its slot and left; 1 is the head and asked
        line.capacity_freed()
        line.capacity_freed()  # freeing twice before a turn wakes one turn
        await reached(lambda: len(asked) == 5)
        await settled()
        assert asked == [0, 0, 1, 1, 2]  # 2 asked once and waits: the second free was spent
        line.capacity_freed()
        await asyncio.gather(*tasks)
        assert len(line) == 0

    asyncio.run(scenario())


def test_the_head_asks_again_after_its_backoff_without_any_slot_freed():
    async def scenario():
        line = WaitingLine()
        ticket = line.join(tried=True)
        started = asyncio.get_running_loop().time()
        await ticket.turn(0.05)
        return asyncio.get_running_loop().time() - started

    assert asyncio.run(scenario()) >= 0.05


def test_a_job_leaving_from_the_middle_or_the_head_keeps_the_line_moving():
    async def scenario():
        line = WaitingLine()
        first, second, third = line.join(), line.join(), line.join()
        await first.turn(LONG)
        second.leave()  # cancelled while waiting
        first.leave()  # started
        await asyncio.wait_for(third.turn(LONG), 1)  # third is now the head
        assert len(line) == 1

    asyncio.run(scenario())
