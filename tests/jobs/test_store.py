"""The job stores' contract (serve_app/jobs/store.py), run against both: SQLite on a file and
a real Redis server (the session's `redis_url`)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from serve_app.jobs.sqlite_store import on_network_filesystem
from serve_app.jobs.store import (
    CANCELLED,
    COMPLETED,
    FAILED,
    IN_PROGRESS,
    IN_QUEUE,
    JobRecord,
    JobStore,
)
from serve_app.jobs.stores import open_store


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs' / 'app.sqlite3'}"
    return request.getfixturevalue("redis_url")


def with_store(url: str, scenario: Callable[..., Awaitable[Any]], stores: int = 1) -> Any:
    """Run `scenario(*stores)` with `stores` connections to one store (a fresh namespace)."""

    async def run() -> Any:
        namespace = uuid.uuid4().hex
        opened = [open_store(url, namespace=namespace) for _ in range(stores)]
        try:
            return await scenario(*opened)
        finally:
            for store in opened:
                await store.close()

    return asyncio.run(run())


def job(endpoint: str = "ep", owner: str = "a", lease: float = 60.0, **fields: Any) -> JobRecord:
    now = time.time()
    return JobRecord(
        id=str(uuid.uuid4()),
        endpoint=endpoint,
        input={"prompt": "hi", "big": 2**70, "x": 0.1 + 0.2, "text": "\u00e9\u4e2d"},
        created=now,
        owner=owner,
        lease_until=now + lease,
        **fields,
    )


def test_a_job_round_trips_exactly_and_moves_through_its_states(store_url):
    async def scenario(store: JobStore) -> None:
        record = job(execution_timeout_s=5.0)
        await store.create(record)
        got = await store.get(record.id)
        assert got is not None and got.input == record.input  # big ints and floats exact
        assert got.status == IN_QUEUE and got.execution_timeout_s == 5.0 and got.ttl_s is None
        assert await store.get("nope") is None

        assert await store.start(record.id, "a", "replica-1", time.time())
        assert (await store.get(record.id)).replica == "replica-1"
        assert await store.append_output(record.id, "a", json.dumps({"n": 1})) == len('{"n": 1}')
        assert await store.append_output(record.id, "b", json.dumps({"n": 9})) == -1  # not b's
        await store.append_output(record.id, "a", json.dumps({"n": 2}))
        assert await store.finish(record.id, COMPLETED, None, None, time.time())
        assert not await store.finish(record.id, FAILED, "late", None, time.time())  # once
        done = await store.get(record.id)
        assert done.status == COMPLETED and done.owner is None and done.finished
        assert await store.outputs(record.id) == [{"n": 1}, {"n": 2}]
        view = done.view(await store.outputs(record.id))
        assert view["output"] == [{"n": 1}, {"n": 2}] and view["workerId"] == "replica-1"
        assert not await store.start(record.id, "a", "replica-2", time.time())  # final: stays
        assert await store.append_output(record.id, "a", "3") == -1  # final: nothing added
        assert await store.append_output("nope", "a", "3") == -1

    with_store(store_url, scenario)


def test_a_failure_keeps_its_reason_and_output(store_url):
    async def scenario(store: JobStore) -> None:
        record = job()
        await store.create(record)
        body = {"error": {"message": "bad", "code": 400}}
        assert await store.finish(record.id, FAILED, "bad input", body, time.time())
        view = (await store.get(record.id)).view(None)
        assert view["status"] == FAILED and view["error"] == "bad input"
        assert view["output"] == body

    with_store(store_url, scenario)


def test_unread_outputs_are_taken_once_each_in_order_even_by_racing_readers(store_url):
    async def scenario(one: JobStore, two: JobStore) -> None:
        record = job()
        await one.create(record)
        taken: list[Any] = []

        async def reader(store: JobStore) -> None:
            for _ in range(30):
                taken.extend((await store.take_unread(record.id, "ep")).items)
                await asyncio.sleep(0)

        async def writer() -> None:
            for i in range(40):
                await one.append_output(record.id, "a", json.dumps(i))
                await asyncio.sleep(0)

        await asyncio.gather(writer(), reader(one), reader(two))
        assert await two.take_unread(record.id, "other-endpoint") is None  # takes nothing
        taken.extend((await two.take_unread(record.id, "ep")).items)
        assert sorted(taken) == list(range(40))  # none twice, none lost
        await one.finish(record.id, FAILED, "why", None, time.time())
        last = await one.take_unread(record.id, "ep")
        assert last.items == [] and last.status == FAILED and last.error == "why"
        assert await one.take_unread("nope", "ep") is None
        assert await one.outputs(record.id) == list(range(40))  # /status still has them all

    with_store(store_url, scenario, stores=2)


def test_counts_queue_and_purge_are_per_endpoint(store_url):
    async def scenario(store: JobStore) -> None:
        a = [job("A") for _ in range(3)]
        b = [job("B") for _ in range(2)]
        for record in a + b:
            await store.create(record)
        assert not await store.start(a[0].id, "someone-else", "r1", time.time())
        await store.start(a[0].id, "a", "r1", time.time())
        await store.start(b[0].id, "a", "r2", time.time())
        assert await store.count_queued("A") == 2 and await store.count_queued("B") == 1
        assert sorted(await store.queued("A")) == sorted(r.id for r in a[1:])
        summary = await store.summary("A")
        assert summary.counts[IN_QUEUE] == 2 and summary.counts[IN_PROGRESS] == 1
        assert summary.busy_replicas == 1 and summary.counts[COMPLETED] == 0
        # purge-queue cancels only jobs still waiting
        assert not await store.finish(a[0].id, CANCELLED, "purged", None, time.time(), IN_QUEUE)
        assert await store.finish(a[1].id, CANCELLED, "purged", None, time.time(), IN_QUEUE)
        assert (await store.summary("A")).counts[CANCELLED] == 1
        assert (await store.get(a[0].id)).status == IN_PROGRESS
        assert (await store.summary("B")).counts[CANCELLED] == 0

    with_store(store_url, scenario)


def test_leases_renew_lapse_and_are_claimed_once(store_url):
    async def scenario(one: JobStore, two: JobStore) -> None:
        now = time.time()
        mine = job(owner="a", lease=60)
        lapsed = job(owner="dead", lease=-1)
        running = job(owner="dead", lease=-1)
        for record in (mine, lapsed, running):
            await one.create(record)
        await one.start(running.id, "dead", "r1", now)
        await one.append_output(running.id, "dead", json.dumps("x"))

        # two replicas claim at once: each orphan goes to exactly one of them
        claims = await asyncio.gather(
            one.claim_orphans("b", time.time(), time.time() + 60),
            two.claim_orphans("c", time.time(), time.time() + 60),
        )
        claimed = [r.id for rs in claims for r in rs]
        assert sorted(claimed) == sorted([lapsed.id, running.id])
        got = {r.id: r for rs in claims for r in rs}
        assert got[running.id].status == IN_PROGRESS and got[running.id].output_bytes == 3
        assert await one.claim_orphans("d", time.time(), time.time() + 60) == []

        # a requeued job counts a retry; a job cancelled elsewhere is lost to its owner
        await one.requeue(running.id, "someone-else")  # not its owner: no effect
        assert (await one.get(running.id)).status == IN_PROGRESS
        await one.requeue(running.id, got[running.id].owner)
        assert (await one.get(running.id)).status == IN_QUEUE
        assert (await one.summary("ep")).retried == 1
        await two.finish(mine.id, CANCELLED, "by request", None, time.time())
        assert await one.renew("a", [mine.id], time.time() + 60) == [mine.id]
        owner_of_lapsed = got[lapsed.id].owner
        assert await one.renew(owner_of_lapsed, [lapsed.id], time.time() + 60) == []

        # released: claimable at once by another replica
        await one.release(owner_of_lapsed, [lapsed.id])
        again = await two.claim_orphans("e", time.time(), time.time() + 60)
        assert [r.id for r in again] == [lapsed.id]

    with_store(store_url, scenario, stores=2)


def test_finished_jobs_expire_after_retention_and_unfinished_never(store_url):
    async def scenario(store: JobStore) -> None:
        old, new, open_ = job(), job(), job()
        for record in (old, new, open_):
            await store.create(record)
        await store.append_output(old.id, "a", json.dumps("out"))
        await store.finish(old.id, COMPLETED, None, None, time.time() - 100)
        await store.finish(new.id, COMPLETED, None, None, time.time())
        assert await store.expire(time.time() - 50) == 1
        assert await store.get(old.id) is None and await store.outputs(old.id) == []
        assert await store.get(new.id) is not None and await store.get(open_.id) is not None
        assert (await store.summary("ep")).counts[COMPLETED] == 1

    with_store(store_url, scenario)


def test_sqlite_jobs_outlive_the_connection(tmp_path):
    url = f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    record = job()

    async def write(store: JobStore) -> None:
        await store.create(record)
        await store.append_output(record.id, "a", json.dumps({"a": 1}))

    async def read(store: JobStore) -> None:
        assert (await store.get(record.id)).input == record.input
        assert (await store.take_unread(record.id, "ep")).items == [{"a": 1}]

    asyncio.run(_with(url, write))
    asyncio.run(_with(url, read))
    assert oct((tmp_path / "jobs.sqlite3").stat().st_mode & 0o777) == "0o600"


async def _with(url: str, scenario: Callable[[JobStore], Awaitable[None]]) -> None:
    store = open_store(url)
    try:
        await scenario(store)
    finally:
        await store.close()


def test_an_unknown_store_url_is_refused_naming_the_schemes():
    with pytest.raises(ValueError, match="sqlite:/// or redis://"):
        open_store("postgres://x")


def test_sqlite_uses_a_rollback_journal_on_network_filesystems():
    mounts = (
        "overlay / overlay rw 0 0\n"
        "mfs#runpod /runpod-volume fuse.mfs rw 0 0\n"
        "server:/export /mnt/nfs nfs4 rw 0 0\n"
        "/dev/sda1 /mnt/nfs/local ext4 rw 0 0\n"
    )
    assert on_network_filesystem("/runpod-volume/jobs/app.sqlite3", mounts)
    assert on_network_filesystem("/mnt/nfs/jobs.sqlite3", mounts)
    assert not on_network_filesystem("/mnt/nfs/local/jobs.sqlite3", mounts)
    assert not on_network_filesystem("/tmp/jobs.sqlite3", mounts)
    assert not on_network_filesystem("/runpod-volume-2/x", mounts)
