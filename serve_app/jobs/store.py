"""Where RunPod jobs live: a store that outlives the job queue's process.

The job queue (deployments/job_queue.py) keeps every job here, not in its memory, so a job
queue replica that dies or is replaced by a redeploy loses nothing: its successor finds the
jobs it left (their lease ran out) and runs them on. Two stores, chosen by JOB_STORE_URL:
SQLite, a file on the node (the default, under BASE_PATH), and Redis, shared by job queue
replicas on any node. Both are tested against the same contract (tests/jobs/test_store.py).

A job is `owned` by the job queue replica that runs it, which renews its `lease` every few
seconds; a job whose lease has run out is an orphan any replica may claim.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from pydantic import BaseModel

IN_QUEUE, IN_PROGRESS = "IN_QUEUE", "IN_PROGRESS"
COMPLETED, FAILED, CANCELLED, TIMED_OUT = "COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"
FINAL = frozenset({COMPLETED, FAILED, CANCELLED, TIMED_OUT})
STATUSES = (IN_QUEUE, IN_PROGRESS, COMPLETED, FAILED, CANCELLED, TIMED_OUT)


class JobRecord(BaseModel):
    """One job as stored. Times are wall-clock seconds (time.time()): they cross processes."""

    id: str
    endpoint: str
    input: Any
    status: str = IN_QUEUE
    created: float
    started: float | None = None
    finished: float | None = None
    replica: str | None = None  # the LLM replica that ran it (RunPod's workerId)
    error: str | None = None
    failure_output: Any = None
    execution_timeout_s: float | None = None
    ttl_s: float | None = None
    retried: int = 0
    owner: str | None = None  # the job queue replica running it
    lease_until: float = 0.0
    output_bytes: int = 0

    def view(self, outputs: list[Any] | None, now: float | None = None) -> dict[str, Any]:
        """RunPod's status object (`outputs`: the job's output items, read when COMPLETED)."""
        now = time.time() if now is None else now
        started = self.started or (self.finished if self.status in FINAL else None)
        body: dict[str, Any] = {
            "id": self.id,
            "status": self.status,
            "delayTime": max(0, round(((started or now) - self.created) * 1000)),
            "executionTime": max(0, round(((self.finished or now) - self.started) * 1000))
            if self.started
            else 0,
        }
        if self.replica is not None:
            body["workerId"] = self.replica
        if self.status == COMPLETED:
            body["output"] = outputs if outputs is not None else []
        elif self.status in FINAL:
            body["error"] = self.error
            if self.failure_output is not None:
                body["output"] = self.failure_output
        return body


class Unread(BaseModel):
    """What /stream returns: the job's status as it was before its `items` were read (so a
    final status comes with the last items), and the items not returned before."""

    endpoint: str
    status: str
    error: str | None
    items: list[Any]


class Summary(BaseModel):
    """An endpoint's jobs by status, the LLM replicas running its jobs, and retries."""

    counts: dict[str, int]
    busy_replicas: int
    retried: int


class JobStore(Protocol):
    """The operations the job queue needs; each is one round trip, atomic where it says so."""

    async def create(self, job: JobRecord) -> None: ...

    async def get(self, job_id: str) -> JobRecord | None: ...

    async def start(self, job_id: str, owner: str, replica: str, now: float) -> bool:
        """-> IN_PROGRESS on `replica`, if `owner` still holds the job and it is not final."""

    async def finish(
        self,
        job_id: str,
        status: str,
        error: str | None,
        output: Any,
        now: float,
        only_if: str | None = None,
    ) -> bool:
        """-> a final status, once (atomic): False if the job was final already, or not in
        status `only_if` when given. Any replica may finish any job (cancel)."""

    async def requeue(self, job_id: str, owner: str) -> None:
        """IN_PROGRESS -> IN_QUEUE, counting a retry (a job that never produced output)."""

    async def append_output(self, job_id: str, owner: str, encoded: str) -> int:
        """Add an output item (JSON text); the job's output bytes after it, or -1 (nothing
        added) if `owner` no longer holds the job or it is final."""

    async def outputs(self, job_id: str) -> list[Any]: ...

    async def take_unread(self, job_id: str, endpoint: str) -> Unread | None:
        """The output items not returned by an earlier call, in order, with the job's status
        (atomic: each item once); None if the endpoint has no such job."""

    async def queued(self, endpoint: str) -> list[str]:
        """The ids of the endpoint's IN_QUEUE jobs."""

    async def count_queued(self, endpoint: str) -> int: ...

    async def summary(self, endpoint: str) -> Summary: ...

    async def renew(self, owner: str, job_ids: list[str], until: float) -> list[str]:
        """Extend `owner`'s lease on its jobs; the ids among them that are final now (another
        replica cancelled them) or owned by another replica."""

    async def claim_orphans(self, owner: str, now: float, until: float) -> list[JobRecord]:
        """Take over the unfinished jobs whose lease ran out before `now` (atomic per job)."""

    async def release(self, owner: str, job_ids: list[str]) -> None:
        """End `owner`'s leases on these jobs at once (a replica shutting down), so another
        replica claims them without waiting for the leases to run out."""

    async def expire(self, finished_before: float) -> int:
        """Drop jobs that finished before the time given; how many."""

    async def close(self) -> None: ...
