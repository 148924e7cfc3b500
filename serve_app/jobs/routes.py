"""RunPod's job API over HTTP: `/v2/<endpoint_id>/run`, `runsync`, `status`, `stream`,
`cancel`, `purge-queue`, `health`, answered by the job queue deployment through its handle,
with RunPod's error shape (`{"error": "..."}`). Included by every ingress replica's app."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic.json_schema import models_json_schema
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from serve_app.config.plan import IngressOptions
from serve_app.http.app import error_response, unknown_endpoint
from serve_app.jobs.inputs import JobInput, check_encodable, request_limits
from serve_app.logs import first_line, get_logger, quiet_access_log

logger = get_logger(__name__)

# RunPod's job polls: every waiting client sends one per job every second or faster.
STATUS_ROUTE = "/v2/{endpoint_id}/status/{job_id}"
STREAM_ROUTE = "/v2/{endpoint_id}/stream/{job_id}"
# The longest a /runsync call waits for its job (RunPod's `wait` goes up to 300,000 ms).
MAX_WAIT_S = 300.0


def runpod_error(status: int, message: str) -> Response:
    """RunPod's error shape for the job API."""
    return error_response("/v2/-/run", status, message)


def _job_body_schema() -> dict[str, Any]:
    """The body of /run and /runsync for the OpenAPI description: worker-vllm's job input (the
    routes read the raw body, to name every problem in RunPod's shape themselves)."""
    _, definitions = models_json_schema(
        [(JobInput, "validation")], ref_template="#/components/schemas/{model}"
    )
    job = {
        "type": "object",
        "required": ["input"],
        "properties": {
            "input": {"$ref": "#/components/schemas/JobInput"},
            "policy": {
                "type": "object",
                "properties": {
                    "executionTimeout": {"type": "integer", "minimum": 1},
                    "ttl": {"type": "integer", "minimum": 1},
                },
            },
        },
    }
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": job}}},
        "x-components": definitions["$defs"],  # moved to the root by http.app
    }


def job_routes(options: IngressOptions, jobs: DeploymentHandle) -> APIRouter:
    """The job API's routes, calling the job queue deployment `jobs`."""
    if not options.log_job_polls:
        quiet_access_log({STATUS_ROUTE, STREAM_ROUTE})
    router = APIRouter()

    async def job_call(
        endpoint_id: str, method: str, *args: Any, wait_s: float | None = None, **kwargs: Any
    ) -> Any:
        """Call the job queue for `endpoint_id`'s jobs; a JSONResponse if that cannot be done
        within JOB_QUEUE_TIMEOUT_S (plus the time the call is asked to wait)."""
        if unknown := unknown_endpoint(endpoint_id, options.endpoint_id):
            return runpod_error(404, unknown)
        if wait_s is not None:
            kwargs["wait_s"] = wait_s
        timeout_s = options.job_queue_timeout_s + (wait_s or 0)
        try:
            return await asyncio.wait_for(
                getattr(jobs, method).remote(endpoint_id, *args, **kwargs), timeout_s
            )
        except TimeoutError:
            logger.warning("the job queue did not answer %s within %.0f s", method, timeout_s)
        except (RayActorError, DeploymentUnavailableError, BackPressureError) as exc:
            logger.warning("job queue unavailable: %s", exc)
        except Exception as exc:  # the job store failed (RayTaskError wraps its error)
            logger.warning("job queue call %s failed: %s", method, first_line(exc))
        return runpod_error(503, "The job queue is unavailable; retry shortly")

    def found(result: Any, job_id: str) -> Any:
        if result is None:
            return runpod_error(
                404,
                f"Job {job_id!r} not found (finished jobs are kept for JOB_RETENTION_S seconds)",
            )
        return result

    async def submit(
        endpoint_id: str, request: Request, sync: bool, wait_ms: int | None = None
    ) -> Any:
        try:
            body = json.loads(await request.body())
        except (ValueError, RecursionError) as exc:
            return runpod_error(400, f"The request body is not valid JSON: {first_line(exc)}")
        try:
            limits = request_limits(body)
            check_encodable(body)
        except ValueError as exc:
            return runpod_error(400, str(exc))
        wait_s = None
        if sync:
            wait_s = options.runsync_timeout_s if wait_ms is None else wait_ms / 1000
            wait_s = min(max(0.0, wait_s), MAX_WAIT_S)
        submitted = await job_call(
            endpoint_id, "submit", body["input"], sync=sync, wait_s=wait_s, **limits
        )
        if isinstance(submitted, dict) and "queue_full" in submitted:
            response = runpod_error(429, submitted["queue_full"])
            response.headers["Retry-After"] = str(submitted["retry_after"])
            return response
        return submitted

    body = _job_body_schema()

    @router.post("/v2/{endpoint_id}/run", openapi_extra=body)
    async def run(endpoint_id: str, request: Request) -> Any:
        return await submit(endpoint_id, request, sync=False)

    @router.post("/v2/{endpoint_id}/runsync", openapi_extra=body)
    async def runsync(endpoint_id: str, request: Request, wait: int | None = None) -> Any:
        """Wait up to RUNSYNC_TIMEOUT_S (or `wait` ms, at most 300 s) for the job; then its id
        to poll."""
        return await submit(endpoint_id, request, sync=True, wait_ms=wait)

    @router.get(STATUS_ROUTE)
    @router.post(STATUS_ROUTE)
    async def status(endpoint_id: str, job_id: str) -> Any:
        return found(await job_call(endpoint_id, "status", job_id), job_id)

    @router.get(STREAM_ROUTE)
    @router.post(STREAM_ROUTE)
    async def stream(endpoint_id: str, job_id: str) -> Any:
        return found(await job_call(endpoint_id, "stream", job_id), job_id)

    @router.post("/v2/{endpoint_id}/cancel/{job_id}")
    async def cancel(endpoint_id: str, job_id: str) -> Any:
        return found(await job_call(endpoint_id, "cancel", job_id), job_id)

    @router.post("/v2/{endpoint_id}/purge-queue")
    async def purge_queue(endpoint_id: str) -> Any:
        return await job_call(endpoint_id, "purge")

    @router.get("/v2/{endpoint_id}/health")
    async def runpod_health(endpoint_id: str) -> Any:
        return await job_call(endpoint_id, "health")

    return router
