"""The job queue: RunPod's job lifecycle, shared by every ingress replica.

A single-replica Serve deployment holds every job's state, so /status, /stream and /cancel
answer the same from any ingress replica (LLM replicas, or routers with several models). Each
job runs as a task that streams the job from an LLM deployment through a DeploymentHandle;
Serve's routing places it on the least busy replica, which runs at most MAX_CONCURRENCY
generations at once (serve_app/http/admission.py). A job that finds no free slot waits here,
IN_QUEUE, in its deployment's line (jobs/waiting_line.py): first come, first served, on whichever
replica has room, one that just started too. A saturated replica is above its autoscaling
target, so Serve adds replicas.

A job always ends: COMPLETED, FAILED (with the reason, also when its replica or engine dies),
CANCELLED or TIMED_OUT. Finished jobs are dropped after JOB_RETENTION_S.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from serve_app.config.plan import JobQueueOptions, UnknownModelError
from serve_app.deployments.lora_sync import AdapterRegistry
from serve_app.deployments.replicas import replica_counts
from serve_app.http.errors import error_dict
from serve_app.jobs.inputs import parse_job_input
from serve_app.jobs.translate import JobFailed, JobStarted, ReplicaBusy
from serve_app.jobs.waiting_line import WaitingLine
from serve_app.logs import get_logger

logger = get_logger(__name__)

IN_QUEUE, IN_PROGRESS = "IN_QUEUE", "IN_PROGRESS"
COMPLETED, FAILED, CANCELLED, TIMED_OUT = "COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"
FINAL = frozenset({COMPLETED, FAILED, CANCELLED, TIMED_OUT})
SWEEP_INTERVAL_S = 10.0
# A job refused by a full replica (ReplicaBusy) waits in its deployment's line; at the head it
# asks again when a job of the deployment ends, or after this long (doubling up to the max).
BUSY_RETRY_S = 0.05
BUSY_RETRY_MAX_S = 1.0


@dataclass
class Job:
    id: str
    input: Any
    execution_timeout_s: float | None = None
    ttl_s: float | None = None
    status: str = IN_QUEUE
    created: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None
    replica: str | None = None
    outputs: list[Any] = field(default_factory=list)
    unread: list[Any] = field(default_factory=list)
    error: str | None = None
    failure_output: Any = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None

    def start(self, replica: str) -> None:
        self.status, self.started, self.replica = IN_PROGRESS, time.monotonic(), replica

    def finish(self, status: str, error: str | None = None, output: Any = None) -> None:
        if self.status in FINAL:
            return
        self.status, self.finished, self.error = status, time.monotonic(), error
        self.failure_output = output
        self.done.set()

    def view(self) -> dict[str, Any]:
        """RunPod's status object."""
        now = time.monotonic()
        started = self.started or (self.finished if self.status in FINAL else None)
        body: dict[str, Any] = {
            "id": self.id,
            "status": self.status,
            "delayTime": round(((started or now) - self.created) * 1000),
            "executionTime": round(((self.finished or now) - self.started) * 1000)
            if self.started
            else 0,
        }
        if self.replica is not None:
            body["workerId"] = self.replica  # the LLM replica that ran it
        if self.status == COMPLETED:
            body["output"] = self.outputs
        elif self.status in FINAL:
            body["error"] = self.error
            if self.failure_output is not None:
                body["output"] = self.failure_output
        return body


class JobQueue:
    def __init__(self, options: JobQueueOptions, deployments: list[str]):
        self._options = options
        self._deployments = deployments
        self._handles: dict[str, DeploymentHandle] = {}
        self._lines: dict[str, WaitingLine] = collections.defaultdict(WaitingLine)
        self._jobs: dict[str, Job] = {}
        self._sweeper: asyncio.Task | None = None

    # ------------------------------------------------------------------ API
    async def submit(
        self,
        job_input: Any,
        *,
        sync: bool = False,
        execution_timeout_s: float | None = None,
        ttl_s: float | None = None,
    ) -> dict[str, Any]:
        """Accept a job and start it in the background. Bad input fails it at once."""
        self._ensure_sweeper()
        job_id = f"{'sync-' if sync else ''}{uuid.uuid4()}"
        job = self._jobs[job_id] = Job(job_id, job_input, execution_timeout_s, ttl_s)
        try:
            parsed = parse_job_input(job_input)
            deployment = await self._deployment_for(parsed.model_name)
        except UnknownModelError as exc:
            # as the OpenAI routes answer it; an OpenAI-wrapped job also gets the error body
            job.finish(
                FAILED,
                str(exc),
                error_dict(exc.status, str(exc), **exc.openai_fields())
                if parsed.openai_route
                else None,
            )
        except ValueError as exc:
            job.finish(FAILED, f"Invalid job input: {exc}")
        if job.status == FAILED:
            logger.info("job %s failed: %s", job_id, job.error)
            return {"id": job_id, "status": job.status}
        job.task = asyncio.create_task(self._run(job, deployment), name=f"job-{job_id}")
        return {"id": job_id, "status": job.status}

    async def _deployment_for(self, model: str | None) -> str:
        """The deployment serving `model`: a served name or a start-up LoRA adapter (the plan),
        or a LoRA adapter loaded at run time (lora_sync.py); UnknownModelError otherwise."""
        try:
            return self._options.models.deployment_for(model)
        except UnknownModelError:
            if not isinstance(model, str):
                raise
            app = serve.get_replica_context().app_name
            try:
                adapters = await asyncio.to_thread(AdapterRegistry.by_deployment, app)
            except Exception:
                adapters = {}
            if model in adapters:
                return adapters[model]
            raise

    async def status(self, job_id: str) -> dict[str, Any] | None:
        job = self._jobs.get(job_id)
        return None if job is None else job.view()

    async def wait(self, job_id: str, timeout_s: float) -> dict[str, Any] | None:
        """The job's status once it is final, or when `timeout_s` has passed."""
        job = self._jobs.get(job_id)
        if job is None:
            return None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(job.done.wait(), timeout_s)
        return job.view()

    async def stream(self, job_id: str) -> dict[str, Any] | None:
        """The outputs produced since the previous call (each exactly once, in order)."""
        job = self._jobs.get(job_id)
        if job is None:
            return None
        chunks, job.unread = job.unread, []
        body = {"id": job.id, "status": job.status, "stream": [{"output": c} for c in chunks]}
        if job.status in FINAL and job.status != COMPLETED:
            body["error"] = job.error
        return body

    async def cancel(self, job_id: str) -> dict[str, Any] | None:
        job = self._jobs.get(job_id)
        if job is None:
            return None
        if job.status not in FINAL:
            job.finish(CANCELLED, "Cancelled by request")
            if job.task is not None:
                job.task.cancel()
        return {"id": job.id, "status": job.status}

    async def purge(self) -> dict[str, Any]:
        """Cancel every job still waiting in the queue; running jobs go on."""
        queued = [j for j in self._jobs.values() if j.status == IN_QUEUE]
        for job in queued:
            await self.cancel(job.id)
        return {"removed": len(queued), "status": "completed"}

    async def stats(self) -> dict[str, Any]:
        """This replica's process and its jobs by status (for operators and tests)."""
        counts = collections.Counter(job.status for job in self._jobs.values())
        return {"pid": os.getpid(), "jobs": dict(counts)}

    async def health(self) -> dict[str, Any]:
        """RunPod's health object: job counts by state, and LLM replicas (workers)."""
        counts = dict.fromkeys((COMPLETED, FAILED, IN_PROGRESS, IN_QUEUE, CANCELLED, TIMED_OUT), 0)
        for job in self._jobs.values():
            counts[job.status] += 1
        replicas = await asyncio.to_thread(replica_counts, set(self._deployments))
        busy = len({j.replica for j in self._jobs.values() if j.status == IN_PROGRESS})
        running = min(busy, replicas["ready"])
        return {
            "jobs": {
                "completed": counts[COMPLETED],
                "failed": counts[FAILED] + counts[TIMED_OUT],
                "inProgress": counts[IN_PROGRESS],
                "inQueue": counts[IN_QUEUE],
                "retried": 0,
            },
            "workers": {
                "idle": replicas["ready"] - running,
                "initializing": replicas["initializing"],
                "ready": replicas["ready"],
                "running": running,
                "throttled": 0,
                "unhealthy": replicas["unhealthy"],
            },
        }

    # ------------------------------------------------------------------ running jobs
    def _handle(self, deployment: str) -> DeploymentHandle:
        """The LLM deployment's handle, looked up by name: with one model served, the LLM
        deployment is the application's ingress and holds this queue's handle, so the queue
        cannot be bound to it in turn."""
        if deployment not in self._handles:
            app_name = serve.get_replica_context().app_name
            self._handles[deployment] = serve.get_deployment_handle(deployment, app_name)
        return self._handles[deployment]

    async def _run(self, job: Job, deployment: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + job.ttl_s if job.ttl_s else None
        line = self._lines[deployment]
        call = ticket = None
        try:
            async with asyncio.timeout_at(deadline) as scope:
                for attempt in itertools.count():
                    if attempt or len(line):  # no slot last time, or others wait already
                        ticket = ticket or line.join(tried=attempt > 0)
                        await ticket.turn(min(BUSY_RETRY_MAX_S, BUSY_RETRY_S * 2**attempt))
                    handle = self._handle(deployment).options(stream=True)
                    call = handle.job.remote(job.input, wait=False)
                    async for item in call:
                        if isinstance(item, JobStarted):
                            job.start(item.replica)
                            if ticket is not None:
                                ticket.leave()
                                ticket = None
                            if job.execution_timeout_s:
                                end = loop.time() + job.execution_timeout_s
                                scope.reschedule(min(end, deadline) if deadline else end)
                        elif isinstance(item, ReplicaBusy):
                            break  # no free slot on the replica Serve chose: still IN_QUEUE
                        elif isinstance(item, JobFailed):
                            job.finish(FAILED, item.error, item.output)
                        else:
                            job.outputs.append(item)
                            job.unread.append(item)
                    else:
                        break  # the job ran
            job.finish(COMPLETED)
        except TimeoutError:
            if call is not None:
                call.cancel()
            limit = "executionTimeout" if job.status == IN_PROGRESS else "ttl"
            job.finish(TIMED_OUT, f"Job exceeded its {limit}")
        except asyncio.CancelledError:
            if call is not None:
                call.cancel()
            job.finish(CANCELLED, "Cancelled by request")
        except RayActorError as exc:
            job.finish(FAILED, f"The LLM replica running this job died: {_first_line(exc)}")
        except DeploymentUnavailableError:
            job.finish(FAILED, f"No healthy engine for {deployment}: the deployment failed")
        except Exception as exc:
            logger.exception("job %s failed", job.id)
            job.finish(FAILED, f"{type(exc).__name__}: {_first_line(exc)}")
        if ticket is not None:
            ticket.leave()
        if job.started is not None:
            line.capacity_freed()
        if job.status != COMPLETED:
            logger.info("job %s ended %s: %s", job.id, job.status, job.error)

    # ------------------------------------------------------------------ retention
    def _ensure_sweeper(self) -> None:
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.create_task(self._sweep())

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            cutoff = time.monotonic() - self._options.retention_s
            expired = [
                j.id for j in self._jobs.values() if j.finished is not None and j.finished < cutoff
            ]
            for job_id in expired:
                del self._jobs[job_id]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
