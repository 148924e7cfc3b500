"""The line of RunPod jobs waiting for a generation slot of one LLM deployment.

First come, first served, and cheap however long it gets: only the job at the head of the
line asks a replica again — at once when it gets there, then each time a job of the
deployment ends (a slot freed) or, failing that, after a backoff (requests outside jobs free
slots too, unseen here). The others wait for their turn without any traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque


class WaitingLine:
    def __init__(self) -> None:
        self._tickets: deque[Ticket] = deque()
        self._freed = asyncio.Event()

    def __len__(self) -> int:
        return len(self._tickets)

    def join(self, tried: bool = False) -> Ticket:
        """A place at the end of the line (`tried`: the job just found no slot, so at the
        head it waits for one to free instead of asking again at once)."""
        ticket = Ticket(self, tried)
        self._tickets.append(ticket)
        if len(self._tickets) == 1:
            ticket._at_head.set()
        return ticket

    def capacity_freed(self) -> None:
        """A generation slot of the deployment may be free: the head of the line tries again."""
        self._freed.set()

    def _leave(self, ticket: Ticket) -> None:
        was_head = bool(self._tickets) and self._tickets[0] is ticket
        with contextlib.suppress(ValueError):
            self._tickets.remove(ticket)
        if was_head and self._tickets:
            self._tickets[0]._at_head.set()


class Ticket:
    """One job's place in a WaitingLine."""

    def __init__(self, line: WaitingLine, tried: bool = False):
        self._line = line
        self._at_head = asyncio.Event()
        self._tried = tried

    async def turn(self, backoff_s: float) -> None:
        """Return when this job should ask a replica for a slot: at once on reaching the head
        of the line; after that, when a slot frees or `backoff_s` has passed."""
        await self._at_head.wait()
        if self._tried:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._line._freed.wait(), backoff_s)
        self._tried = True
        self._line._freed.clear()  # what frees from now on wakes the next turn

    def leave(self) -> None:
        """Out of the line (the job started, or ended): the next one moves to the head."""
        self._line._leave(self)
