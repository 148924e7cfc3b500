"""The job queue: RunPod's job lifecycle, shared by every ingress replica.

Jobs live in a job store (jobs/store.py: SQLite on the node by default, Redis for clusters),
not in this process, so any job queue replica answers /status, /stream and /cancel for any
job, and a replica that dies or is replaced by a redeploy loses none: each replica holds a
lease on the jobs it runs and renews it every few seconds; a job whose lease runs out is
claimed by a replica that is alive (the restarted one, or another). A claimed job that was
waiting runs; one that was running without output yet runs again (RunPod's `retried`); one
that had streamed output ends FAILED, saying the queue restarted (its generation went with
the process that streamed it).

Each job runs as a task that streams the job from an LLM deployment through a handle;
Serve places it on the least busy replica, which runs at most MAX_CONCURRENCY generations
at once (serve_app/http/admission.py). A job that finds no free slot waits here, IN_QUEUE,
in its deployment's line (jobs/waiting_line.py): first come, first served. A job always
ends: COMPLETED, FAILED (with the reason), CANCELLED or TIMED_OUT; finished jobs are dropped
after JOB_RETENTION_S.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from serve_app.config.plan import JobQueueOptions, UnknownModelError
from serve_app.deployments import replicas
from serve_app.deployments.lora_sync import AdapterRegistry
from serve_app.http.errors import error_dict
from serve_app.jobs.inputs import parse_job_input
from serve_app.jobs.store import (
    CANCELLED,
    COMPLETED,
    FAILED,
    FINAL,
    IN_PROGRESS,
    IN_QUEUE,
    TIMED_OUT,
    JobRecord,
    JobStore,
)
from serve_app.jobs.stores import open_store
from serve_app.jobs.translate import JobFailed, JobStarted, ReplicaBusy
from serve_app.jobs.waiting_line import WaitingLine
from serve_app.logs import first_line, get_logger, printable

logger = get_logger(__name__)

SWEEP_INTERVAL_S = 10.0
# A replica renews its leases this often; a job whose lease is this old has lost its replica.
RENEW_INTERVAL_S = 2.0
LEASE_S = 10.0
# /runsync and wait() for a job another replica runs: how often the store is read.
POLL_INTERVAL_S = 0.1
# A job refused by a full replica (ReplicaBusy) waits in its deployment's line; at the head it
# asks again when a job of the deployment ends, or after this long (doubling up to the max).
BUSY_RETRY_S = 0.05
BUSY_RETRY_MAX_S = 1.0
QUEUE_FULL_RETRY_AFTER_S = 5
# A job's end is stored with this many attempts (backoff to 2 s) before the job is let go.
FINISH_ATTEMPTS = 8
# A job whose replica or engine dies before it produced output runs again, this many times.
MAX_RETRIES = 2


@dataclass
class LocalJob:
    """A job this replica runs: its task, and an event set when it ends."""

    record: JobRecord
    done: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None
    abandoned: bool = False  # its lease may have lapsed: stopped, left to whoever claims it


class JobQueue:
    async def __init__(  # type: ignore[misc]
        self,
        options: JobQueueOptions,
        deployments: list[str],
        store: JobStore | None = None,
        owner: str | None = None,
    ):
        self._options = options
        self._deployments = deployments
        self._handles: dict[str, DeploymentHandle] = {}
        self._lines: dict[str, WaitingLine] = collections.defaultdict(WaitingLine)
        self._local: dict[str, LocalJob] = {}
        self._closing = False
        if store is None:
            app = serve.get_replica_context().app_name
            url = options.store_for(app)
            store = open_store(url, namespace=app)
            logger.info("job store: %s", re.sub(r"//[^@/]*@", "//***@", url))  # no password
        self._store = store
        self._owner = owner or f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            await self._recover()  # jobs a replica before this one left (its lease ran out)
        except Exception as exc:
            raise RuntimeError(
                f"The job store cannot be reached ({type(exc).__name__}: {exc}); check "
                "JOB_STORE_URL, or leave it unset for an SQLite file under BASE_PATH"
            ) from exc
        self._renewed = time.monotonic()
        self._renewer = asyncio.create_task(self._renew(), name="job-leases")
        self._maintainer = asyncio.create_task(self._maintain(), name="job-takeover")

    # ------------------------------------------------------------------ API
    async def submit(
        self,
        endpoint: str,
        job_input: Any,
        *,
        sync: bool = False,
        execution_timeout_s: float | None = None,
        ttl_s: float | None = None,
        wait_s: float | None = None,
    ) -> dict[str, Any]:
        """Accept a job and start it in the background (bad input fails it there). With
        `wait_s`, the status once the job ends or that time has passed (runsync). A full
        queue answers {"queue_full": reason} instead."""
        if await self._store.count_queued(endpoint) >= self._options.max_queued_jobs:
            return {
                "queue_full": f"{self._options.max_queued_jobs} jobs wait already "
                f"(MAX_QUEUED_JOBS); retry after {QUEUE_FULL_RETRY_AFTER_S} s",
                "retry_after": QUEUE_FULL_RETRY_AFTER_S,
            }
        now = time.time()
        job = JobRecord(
            id=f"{'sync-' if sync else ''}{uuid.uuid4()}",
            endpoint=endpoint,
            input=job_input,
            created=now,
            execution_timeout_s=execution_timeout_s or self._options.execution_timeout_s,
            ttl_s=ttl_s or self._options.ttl_s,
            owner=self._owner,
            lease_until=now + LEASE_S,
        )
        await self._store.create(job)
        self._start(LocalJob(job))
        if wait_s is not None:
            return await self.wait(endpoint, job.id, wait_s) or {"id": job.id, "status": FAILED}
        return {"id": job.id, "status": IN_QUEUE}

    async def status(self, endpoint: str, job_id: str) -> dict[str, Any] | None:
        job = await self._get(endpoint, job_id)
        if job is None:
            return None
        return job.view(await self._store.outputs(job_id) if job.status == COMPLETED else None)

    async def wait(self, endpoint: str, job_id: str, timeout_s: float) -> dict[str, Any] | None:
        """The job's status once it is final, or when `timeout_s` has passed."""
        job = await self._get(endpoint, job_id)
        if job is None:
            return None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                local = self._local.get(job_id)
                if local is not None:
                    await local.done.wait()
                else:  # run by another replica: read the store until it ends
                    while (await self._status_of(job_id)) not in FINAL:
                        await asyncio.sleep(POLL_INTERVAL_S)
        return await self.status(endpoint, job_id)

    async def stream(self, endpoint: str, job_id: str) -> dict[str, Any] | None:
        """The outputs produced since the previous call (each exactly once, in order); the
        status is final only in the answer that carries the last outputs."""
        unread = await self._store.take_unread(job_id, endpoint)
        if unread is None:
            return None
        stream = [{"output": item} for item in unread.items]
        body = {"id": job_id, "status": unread.status, "stream": stream}
        if unread.status in FINAL and unread.status != COMPLETED:
            body["error"] = unread.error
        return body

    async def cancel(self, endpoint: str, job_id: str) -> dict[str, Any] | None:
        job = await self._get(endpoint, job_id)
        if job is None:
            return None
        if job.status not in FINAL:
            local = self._local.get(job_id)
            if local is not None and local.task is not None:
                local.task.cancel()  # its generation ends; the task records CANCELLED
            # (run by another replica: that one sees it when it renews its lease, and stops it)
            now = time.time()
            await self._store.finish(job_id, CANCELLED, "Cancelled by request", None, now)
        return {"id": job_id, "status": await self._status_of(job_id)}

    async def purge(self, endpoint: str = "") -> dict[str, Any]:
        """Cancel every job of the endpoint still waiting in the queue; running jobs go on."""
        removed = 0
        for job_id in await self._store.queued(endpoint):
            now = time.time()
            reason = "Removed by purge-queue"
            if await self._store.finish(job_id, CANCELLED, reason, None, now, only_if=IN_QUEUE):
                removed += 1  # still waiting when purged: one that started meanwhile goes on
                local = self._local.get(job_id)
                if local is not None and local.task is not None:
                    local.task.cancel()
        return {"removed": removed, "status": "completed"}

    async def stats(self) -> dict[str, Any]:
        """This replica's process and the jobs it runs by status (for operators and tests)."""
        counts: collections.Counter[str] = collections.Counter()
        for job_id in list(self._local):
            counts[await self._status_of(job_id) or "gone"] += 1
        return {"pid": os.getpid(), "owner": self._owner, "jobs": dict(counts)}

    async def health(self, endpoint: str = "") -> dict[str, Any]:
        """RunPod's health object: the endpoint's job counts, and LLM replicas (workers)."""
        summary = await self._store.summary(endpoint)
        counts = summary.counts
        workers = await replicas.counts(set(self._deployments))
        running = min(summary.busy_replicas, workers["ready"])
        return {
            "jobs": {
                "completed": counts[COMPLETED],
                "failed": counts[FAILED] + counts[TIMED_OUT],
                "inProgress": counts[IN_PROGRESS],
                "inQueue": counts[IN_QUEUE],
                "retried": summary.retried,
            },
            "workers": {
                "idle": workers["ready"] - running,
                "initializing": workers["initializing"],
                "ready": workers["ready"],
                "running": running,
                "throttled": 0,
                "unhealthy": workers["unhealthy"],
            },
        }

    def __del__(self) -> Any:
        """Serve stops this replica (a redeploy, a scale-in): its jobs go to the replicas
        that stay or start, at once rather than when the leases run out. Serve awaits what
        this returns; Python's own finalizer call later finds nothing left to do."""
        if self._closing or not hasattr(self, "_maintainer"):
            return None
        self._closing = True
        return self._shutdown()

    async def _shutdown(self) -> None:
        self._renewer.cancel()
        self._maintainer.cancel()
        running = [local.task for local in self._local.values() if local.task is not None]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._store.release(self._owner, list(self._local))
        await self._store.close()

    # ------------------------------------------------------------------ store helpers
    async def _get(self, endpoint: str, job_id: str) -> JobRecord | None:
        """The job, if it belongs to `endpoint` (another endpoint id does not see it)."""
        job = await self._store.get(job_id)
        return job if job is not None and job.endpoint == endpoint else None

    async def _status_of(self, job_id: str) -> str | None:
        job = await self._store.get(job_id)
        return None if job is None else job.status

    async def _finish(
        self, local: LocalJob, status: str, error: str | None = None, output: Any = None
    ) -> None:
        """Record the job's end, retrying while the store fails; if it keeps failing, the job
        is let go: its lease lapses and whichever replica claims it ends it."""
        job_id = local.record.id
        try:
            for attempt in range(FINISH_ATTEMPTS):
                try:
                    await self._store.finish(job_id, status, error, output, time.time())
                    return
                except Exception as exc:
                    if attempt == FINISH_ATTEMPTS - 1:
                        logger.error(
                            "job %s: its end (%s) could not be stored: %s; another replica "
                            "takes it over",
                            job_id,
                            status,
                            first_line(exc),
                        )
                    else:
                        await asyncio.sleep(min(2.0, 0.1 * 2**attempt))
        finally:
            local.done.set()
            self._local.pop(job_id, None)

    async def _deployment_for(self, job: JobRecord) -> str:
        """The deployment serving the job's model: a served name or a start-up LoRA adapter
        (the plan), or a LoRA adapter loaded at run time (lora_sync.py); _InputError if the
        input is bad or names no model served here."""
        try:
            parsed = parse_job_input(job.input)
        except ValueError as exc:
            raise _InputError(f"Invalid job input: {exc}") from None
        model = parsed.model_name
        try:
            return self._options.models.deployment_for(model)
        except UnknownModelError as exc:
            if isinstance(model, str):
                app = serve.get_replica_context().app_name
                try:
                    adapters = await asyncio.wait_for(
                        asyncio.to_thread(AdapterRegistry.by_deployment, app), 5.0
                    )
                except Exception:
                    adapters = {}
                if model in adapters:
                    return adapters[model]
            # as the OpenAI routes answer it; an OpenAI-wrapped job also gets the error body
            output = error_dict(exc.status, str(exc), **exc.openai_fields())
            raise _InputError(str(exc), output if parsed.openai_route else None) from None

    # ------------------------------------------------------------------ leases
    async def _renew(self) -> None:
        """Renew this replica's leases, and stop jobs cancelled through other replicas. A
        replica that could not renew for most of a lease stops its jobs (others may have
        claimed them): a job never runs on two replicas for long."""
        while True:
            await asyncio.sleep(RENEW_INTERVAL_S)
            now = time.time()
            try:
                lost = await self._store.renew(self._owner, list(self._local), now + LEASE_S)
            except Exception as exc:
                logger.warning("job leases not renewed: %s", first_line(exc))
                if time.monotonic() - self._renewed <= LEASE_S - 2 * RENEW_INTERVAL_S:
                    continue
                lost = list(self._local)
            else:
                self._renewed = time.monotonic()
            for job_id in lost:
                local = self._local.pop(job_id, None)
                if local is not None:
                    local.abandoned = True
                    local.done.set()
                    if local.task is not None:
                        local.task.cancel()

    async def _maintain(self) -> None:
        """Take over jobs whose replica is gone, and drop jobs past their retention."""
        swept = 0.0
        while True:
            await asyncio.sleep(RENEW_INTERVAL_S)
            try:
                await self._recover()
                now = time.time()
                if now - swept > SWEEP_INTERVAL_S:
                    swept = now
                    await self._store.expire(now - self._options.retention_s)
            except Exception:
                logger.exception("job store maintenance failed; retrying")

    async def _recover(self) -> None:
        now = time.time()
        for job in await self._store.claim_orphans(self._owner, now, now + LEASE_S):
            if job.id in self._local:
                continue  # this replica's own, its lease renewed late: it runs already
            if job.status == IN_PROGRESS and job.output_bytes:
                await self._store.finish(
                    job.id,
                    FAILED,
                    "The job queue replica running this job stopped after the job had "
                    "produced output; submit the job again",
                    None,
                    now,
                )
                logger.warning("job %s: its job queue replica stopped mid-stream", job.id)
                continue
            if job.status == IN_PROGRESS:
                await self._store.requeue(job.id, self._owner)  # no output yet: it runs again
                job.status, job.retried = IN_QUEUE, job.retried + 1
            self._start(LocalJob(job))
            logger.info("job %s taken over from a stopped job queue replica", job.id)

    def _start(self, local: LocalJob) -> None:
        self._local[local.record.id] = local
        local.task = asyncio.create_task(self._run(local), name=f"job-{local.record.id}")

    # ------------------------------------------------------------------ running jobs
    def _handle(self, deployment: str) -> DeploymentHandle:
        """The LLM deployment's handle, looked up by name: with one model served, the LLM
        deployment is the application's ingress and holds this queue's handle, so the queue
        cannot be bound to it in turn."""
        if deployment not in self._handles:
            app_name = serve.get_replica_context().app_name
            self._handles[deployment] = serve.get_deployment_handle(deployment, app_name)
        return self._handles[deployment]

    async def _run(self, local: LocalJob) -> None:
        job = local.record
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (job.created + job.ttl_s - time.time()) if job.ttl_s else None
        line: WaitingLine | None = None
        call = ticket = None
        status, error, output = COMPLETED, None, None
        started = produced = False
        retries = 0
        deployment = "?"
        try:
            deployment = await self._deployment_for(job)
            line = self._lines[deployment]
            async with asyncio.timeout_at(deadline) as scope:
                for attempt in itertools.count():
                    if attempt or len(line):  # no slot last time, or others wait already
                        ticket = ticket or line.join(tried=attempt > 0)
                        backoff = BUSY_RETRY_S * 2 ** min(attempt, 10)
                        await ticket.turn(min(BUSY_RETRY_MAX_S, backoff))
                    handle = self._handle(deployment).options(stream=True)
                    call = handle.job.remote(job.input, wait=False)
                    try:
                        async for item in call:
                            if isinstance(item, JobStarted):
                                started = True
                                now = time.time()
                                owner = self._owner
                                if not await self._store.start(job.id, owner, item.replica, now):
                                    call.cancel()  # cancelled, or claimed by another replica
                                    self._local.pop(job.id, None)
                                    local.done.set()
                                    return
                                if ticket is not None:
                                    ticket.leave()
                                    ticket = None
                                if job.execution_timeout_s:
                                    end = loop.time() + job.execution_timeout_s
                                    scope.reschedule(min(end, deadline) if deadline else end)
                            elif isinstance(item, ReplicaBusy):
                                break  # no free slot on the replica Serve chose: still IN_QUEUE
                            elif isinstance(item, JobFailed):
                                if not produced and _engine_died(item) and retries < MAX_RETRIES:
                                    raise _Retry(item.error)
                                status, error, output = FAILED, item.error, item.output
                            else:
                                produced = True
                                size = await self._store.append_output(
                                    job.id, self._owner, json.dumps(item)
                                )
                                if size < 0:  # cancelled, or claimed by another replica
                                    call.cancel()
                                    self._local.pop(job.id, None)
                                    local.done.set()
                                    return
                                if size > self._options.max_output_bytes:
                                    call.cancel()
                                    status, error = FAILED, _too_large(self._options)
                                    break
                        else:
                            break  # the job ran
                    except (RayActorError, _Retry) as exc:
                        if produced or retries >= MAX_RETRIES:
                            raise
                        # its replica or engine died before the job produced anything: it
                        # runs again on another replica (RunPod's `retried`)
                        retries += 1
                        started = False
                        scope.reschedule(deadline)  # its execution time starts again
                        await self._store.requeue(job.id, self._owner)
                        logger.info("job %s retried: %s", job.id, printable(first_line(exc)))
                        continue
                    if status == FAILED:
                        break
        except TimeoutError:
            if call is not None:
                call.cancel()
            limit = "executionTimeout" if started else "ttl"
            status, error = TIMED_OUT, f"Job exceeded its {limit}"
        except asyncio.CancelledError:
            if call is not None:
                call.cancel()
            if self._closing or local.abandoned:  # another replica takes the job over
                return
            status, error = CANCELLED, "Cancelled by request"
        except _InputError as exc:
            status, error, output = FAILED, exc.message, exc.output
        except RayActorError as exc:
            status, error = FAILED, f"The LLM replica running this job died: {first_line(exc)}"
        except _Retry as exc:
            status, error = FAILED, str(exc)
        except DeploymentUnavailableError:
            status, error = FAILED, f"No healthy engine for {deployment}: the deployment failed"
        except Exception as exc:
            logger.exception("job %s failed", job.id)
            status, error = FAILED, f"{type(exc).__name__}: {first_line(exc)}"
        finally:
            if ticket is not None:
                ticket.leave()
            if started and line is not None:
                line.capacity_freed()
        if job.id in self._local:
            await self._finish(local, status, error, output)
        if status != COMPLETED:
            logger.info("job %s ended %s: %s", job.id, status, printable(error))


class _Retry(Exception):
    """The job's replica answered that its engine died, before the job produced output."""


def _engine_died(failed: JobFailed) -> bool:
    """A failure that is the replica's, not the job's: the engine was dead (503)."""
    body = failed.output if isinstance(failed.output, dict) else {}
    error = body.get("error")
    return isinstance(error, dict) and error.get("code") in (503, "service_unavailable")


class _InputError(Exception):
    def __init__(self, message: str, output: Any = None):
        super().__init__(message)
        self.message, self.output = message, output


def _too_large(options: JobQueueOptions) -> str:
    return f"The job's output exceeded {options.max_output_bytes} bytes (MAX_JOB_OUTPUT_BYTES)"
