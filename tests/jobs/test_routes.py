"""The job API's HTTP routes (serve_app/jobs/routes.py) against a fake job queue handle:
RunPod's error shape, bounds, and a bound on every call to the job queue."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from serve_app.config.plan import IngressOptions, ModelRoutes
from serve_app.jobs.routes import MAX_WAIT_S, job_routes


class FakeQueue:
    """A job queue handle: records calls; `hang` makes every call hang."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.hang = False
        self.full = False

    def __getattr__(self, method: str) -> Any:
        queue = self

        class Method:
            def remote(self, *args: Any, **kwargs: Any) -> Any:
                queue.calls.append((method, args, kwargs))
                return queue._answer(method, args, kwargs)

        return Method()

    async def _answer(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self.hang:
            await asyncio.sleep(3600)
        if method == "submit" and self.full:
            return {"queue_full": "6 jobs wait already (MAX_QUEUED_JOBS)", "retry_after": 5}
        if method == "submit":
            return {"id": "job-1", "status": "IN_QUEUE"}
        return None if args[-1] == "missing" else {"id": args[-1], "status": "COMPLETED"}


def client(queue: FakeQueue, **fields: Any) -> TestClient:
    options = IngressOptions(
        mode="llm",
        models=ModelRoutes(routes={"tiny": "LLM"}, default_deployment="LLM"),
        num_replicas=1,
        replica_wait_timeout_s=10,
        runsync_timeout_s=90,
        endpoint_id=None,
        max_request_bytes=1 << 20,
        **fields,
    )
    app = FastAPI()
    app.include_router(job_routes(options, queue))  # type: ignore[arg-type]
    return TestClient(app)


JOB = {"input": {"prompt": "hi"}}


def test_jobs_are_submitted_and_read_under_their_endpoint_id():
    queue = FakeQueue()
    http = client(queue)
    assert http.post("/v2/A/run", json=JOB).json() == {"id": "job-1", "status": "IN_QUEUE"}
    assert http.get("/v2/A/status/job-1").json()["status"] == "COMPLETED"
    assert [(m, a[0]) for m, a, _ in queue.calls] == [("submit", "A"), ("status", "A")]
    missing = http.get("/v2/A/status/missing")
    assert missing.status_code == 404 and "JOB_RETENTION_S" in missing.json()["error"]


def test_runsync_waits_as_asked_clamped_to_runpods_limit():
    queue = FakeQueue()
    http = client(queue)
    http.post("/v2/A/runsync?wait=2500", json=JOB)
    http.post("/v2/A/runsync?wait=99999999", json=JOB)
    http.post("/v2/A/runsync?wait=-5", json=JOB)
    http.post("/v2/A/runsync", json=JOB)
    waits = [kwargs["wait_s"] for _, _, kwargs in queue.calls]
    assert waits == [2.5, MAX_WAIT_S, 0.0, 90]


def test_a_full_queue_is_429_with_retry_after():
    queue = FakeQueue()
    queue.full = True
    response = client(queue).post("/v2/A/run", json=JOB)
    assert response.status_code == 429 and response.headers["Retry-After"] == "5"
    assert "MAX_QUEUED_JOBS" in response.json()["error"]


def test_a_job_queue_that_does_not_answer_is_503_within_its_timeout():
    queue = FakeQueue()
    queue.hang = True
    http = client(queue, job_queue_timeout_s=0.2)
    for response in (http.get("/v2/A/status/job-1"), http.post("/v2/A/run", json=JOB)):
        assert response.status_code == 503 and response.headers["Retry-After"]
        assert set(response.json()) == {"error"}


@pytest.mark.parametrize(
    "body, named",
    [
        (b'{"input": {"prompt": "\\ud800"}}', "not valid Unicode"),
        (b'{"input": ' + b"[" * 5000 + b"]" * 5000 + b"}", "not valid JSON"),
        (b'{"input": {"prompt": "\\udfff and more"}, "policy": {}}', "not valid Unicode"),
        (b"[1, 2]", '"input" field'),
    ],
)
def test_bodies_no_job_could_hold_are_400_naming_the_problem(body, named):
    queue = FakeQueue()
    response = client(queue).post("/v2/A/run", content=body)
    assert response.status_code == 400 and named in response.json()["error"]
    assert queue.calls == []
