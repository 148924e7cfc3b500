"""The job queue's lifecycle over a real job store (SQLite) against a fake LLM deployment:
replicas that die or share jobs, cancellation across replicas, bounds. No Ray, no engine;
the same paths on the real app: tests/e2e/api/test_runpod_api.py and tests/e2e/router/."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from ray.exceptions import RayActorError

from serve_app.config.plan import JobQueueOptions, ModelRoutes
from serve_app.deployments import job_queue
from serve_app.deployments.job_queue import JobQueue
from serve_app.jobs.stores import open_store
from serve_app.jobs.translate import JobFailed, JobStarted, ReplicaBusy

EP = "ep"


class FakeLLM:
    """An LLM deployment's handle: each job starts, streams `early` output if it streams,
    then waits for `gate` and yields its prompt. `busy`: every replica is full."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.busy = False
        self.cancelled: list[str] = []
        self.failures: list[Any] = []  # what the next attempts meet: an exception or a JobFailed

    def options(self, **_: Any) -> FakeLLM:
        return self

    @property
    def job(self) -> FakeLLM:
        return self

    def remote(self, job_input: dict[str, Any], wait: bool = True) -> FakeCall:
        return FakeCall(self, job_input)


class FakeCall:
    def __init__(self, llm: FakeLLM, job_input: dict[str, Any]):
        self._llm, self._input = llm, job_input

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._items()

    async def _items(self) -> AsyncIterator[Any]:
        if self._llm.busy:
            yield ReplicaBusy()
            return
        yield JobStarted(replica="llm-1")
        if self._llm.failures:
            failure = self._llm.failures.pop(0)
            if isinstance(failure, BaseException):
                raise failure
            yield failure
            return
        if self._input.get("stream"):
            yield {"early": self._input["prompt"]}
        await self._llm.gate.wait()
        yield {"text": self._input["prompt"] * self._input.get("repeat", 1)}

    def cancel(self) -> None:
        self._llm.cancelled.append(self._input["prompt"])


@pytest.fixture(autouse=True)
def short_leases(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(job_queue, "LEASE_S", 0.4)
    monkeypatch.setattr(job_queue, "RENEW_INTERVAL_S", 0.05)


def options(**fields: Any) -> JobQueueOptions:
    routes = ModelRoutes(routes={"tiny": "LLM"}, default_deployment="LLM")
    return JobQueueOptions(models=routes, retention_s=60, **fields)


async def start_queue(url: str, llm: FakeLLM, owner: str, **fields: Any) -> JobQueue:
    queue = JobQueue.__new__(JobQueue)
    await queue.__init__(options(**fields), ["LLM"], store=open_store(url), owner=owner)
    queue._handle = lambda deployment: llm  # type: ignore[method-assign]
    return queue


async def die(queue: JobQueue) -> None:
    """As a kill -9 would leave it: tasks gone, leases left to run out, nothing released."""
    queue._closing = True
    queue._maintainer.cancel()
    tasks = [local.task for local in queue._local.values() if local.task]
    for task in tasks:
        task.cancel()
    await asyncio.gather(queue._maintainer, *tasks, return_exceptions=True)
    await queue._store.close()


async def until(predicate: Any, timeout: float = 5.0) -> None:
    """Let the queue's tasks run until `predicate()` (sync or async) holds, or fail."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.005)


async def status(queue: JobQueue, job_id: str) -> str:
    return (await queue.status(EP, job_id))["status"]


def run(scenario: Any) -> None:
    asyncio.run(asyncio.wait_for(scenario, 30))


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'jobs.sqlite3'}"


def test_a_dead_replicas_jobs_are_taken_over_none_lost(url):
    async def scenario() -> None:
        llm = FakeLLM()
        a = await start_queue(url, llm, "a")
        streamed = (await a.submit(EP, {"prompt": "s", "stream": True}))["id"]
        plain = [(await a.submit(EP, {"prompt": f"p{i}"}))["id"] for i in range(2)]
        await until(lambda: all_running(a, [*plain, streamed]))
        await until(lambda: a._store.outputs(streamed))
        await die(a)

        b = await start_queue(url, llm, "b")
        await until(lambda: len(b._local) == 2)  # the two without output
        assert await status(b, streamed) == "FAILED"
        assert "job queue replica" in (await b.status(EP, streamed))["error"]
        llm.gate.set()
        for job_id in plain:
            final = await b.wait(EP, job_id, 5)
            assert final["status"] == "COMPLETED"
            assert final["output"] == [{"text": f"p{plain.index(job_id)}"}]
        assert (await b._store.summary(EP)).retried == 2
        await b.__del__()

    run(scenario())


async def all_running(queue: JobQueue, ids: list[str]) -> bool:
    return all([await status(queue, job_id) == "IN_PROGRESS" for job_id in ids])


def test_a_job_is_answered_and_cancelled_through_another_replica(url):
    async def scenario() -> None:
        llm = FakeLLM()
        a = await start_queue(url, llm, "a")
        b = await start_queue(url, llm, "b")
        job_id = (await a.submit(EP, {"prompt": "x"}))["id"]
        await until(lambda: all_running(b, [job_id]))
        assert (await b.cancel(EP, job_id))["status"] == "CANCELLED"
        await until(lambda: llm.cancelled == ["x"])  # a saw it, stopped the call
        assert await b.status("other-endpoint", job_id) is None
        done = (await b.submit(EP, {"prompt": "y"}))["id"]
        llm.gate.set()
        assert (await a.wait(EP, done, 5))["status"] == "COMPLETED"  # polled from the store
        for queue in (a, b):
            await queue.__del__()

    run(scenario())


def test_a_replica_that_stops_hands_its_jobs_over_at_once(url):
    async def scenario() -> None:
        llm = FakeLLM()
        a = await start_queue(url, llm, "a")
        job_id = (await a.submit(EP, {"prompt": "x"}))["id"]
        await until(lambda: all_running(a, [job_id]))
        b = await start_queue(url, llm, "b")
        await a.__del__()  # Serve's graceful stop: leases released, no waiting them out
        await until(lambda: job_id in b._local)
        llm.gate.set()
        assert (await b.wait(EP, job_id, 5))["status"] == "COMPLETED"
        await b.__del__()

    run(scenario())


def test_the_queue_bound_and_the_output_bound(url):
    async def scenario() -> None:
        llm = FakeLLM()
        llm.busy = True  # nothing starts: every job waits
        a = await start_queue(url, llm, "a", max_queued_jobs=2, max_output_bytes=1024)
        for _ in range(2):
            assert "id" in await a.submit(EP, {"prompt": "q"})
        full = await a.submit(EP, {"prompt": "q"})
        assert "MAX_QUEUED_JOBS" in full["queue_full"] and full["retry_after"] > 0
        assert "id" in await a.submit("another-endpoint", {"prompt": "q"})  # per endpoint
        assert (await a.purge(EP))["removed"] == 2

        llm.busy = False
        llm.gate.set()
        big = await a.submit(EP, {"prompt": "z", "repeat": 2000}, wait_s=5)
        assert big["status"] == "FAILED" and "MAX_JOB_OUTPUT_BYTES" in big["error"]
        small = await a.submit(EP, {"prompt": "z"}, wait_s=5)
        assert small["status"] == "COMPLETED"
        await a.__del__()

    run(scenario())


def test_an_unreachable_store_fails_start_up_naming_the_setting():
    async def scenario() -> None:
        queue = JobQueue.__new__(JobQueue)
        store = open_store("redis://127.0.0.1:1/0")
        with pytest.raises(RuntimeError, match="JOB_STORE_URL"):
            await queue.__init__(options(), ["LLM"], store=store, owner="a")
        with contextlib.suppress(Exception):
            await store.close()

    run(scenario())


def test_a_job_whose_replica_or_engine_died_before_it_produced_output_runs_again(url):
    dead_engine = JobFailed("engine died", {"error": {"code": "service_unavailable"}})
    bad_request = JobFailed("bad", {"error": {"code": None, "message": "bad"}})

    async def scenario() -> None:
        llm = FakeLLM()
        llm.gate.set()
        a = await start_queue(url, llm, "a")
        llm.failures = [dead_engine, RayActorError()]
        done = await a.submit(EP, {"prompt": "x"}, wait_s=5)
        assert done["status"] == "COMPLETED" and llm.failures == []
        assert (await a._store.summary(EP)).retried == 2
        llm.failures = [dead_engine, dead_engine, dead_engine]  # at most MAX_RETRIES times
        assert (await a.submit(EP, {"prompt": "x"}, wait_s=5))["status"] == "FAILED"
        llm.failures = [bad_request]  # the job's own failure: no retry
        failed = await a.submit(EP, {"prompt": "x"}, wait_s=5)
        assert failed["status"] == "FAILED" and failed["error"] == "bad"
        await a.__del__()

    run(scenario())


def test_a_replica_that_cannot_renew_its_leases_stops_its_jobs_for_another_to_run(url):
    async def scenario() -> None:
        llm = FakeLLM()
        a = await start_queue(url, llm, "a")
        job_id = (await a.submit(EP, {"prompt": "x"}))["id"]
        await until(lambda: all_running(a, [job_id]))

        async def unreachable(*args: Any) -> Any:
            raise ConnectionError("the store is unreachable")

        a._store.renew = unreachable  # type: ignore[method-assign]
        await until(lambda: llm.cancelled == ["x"])  # it stopped its call: no double run
        assert job_id not in a._local
        b = await start_queue(url, llm, "b")
        await until(lambda: job_id in b._local)  # no output yet: it runs again there
        llm.gate.set()
        assert (await b.wait(EP, job_id, 5))["status"] == "COMPLETED"
        for queue in (a, b):
            await queue.__del__()

    run(scenario())
