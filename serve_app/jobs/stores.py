"""The job store JOB_STORE_URL names (the implementations of jobs/store.py's JobStore)."""

from __future__ import annotations

from serve_app.jobs.redis_store import RedisJobStore
from serve_app.jobs.sqlite_store import SqliteJobStore
from serve_app.jobs.store import JobStore


def open_store(url: str, namespace: str = "") -> JobStore:
    """`sqlite:///<path>` or `redis://...` (`rediss://`, `unix://`); in Redis, `namespace`
    (the Serve application's name) keeps applications sharing a server apart."""
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisJobStore(url, namespace)
    if url.startswith("sqlite:///"):
        return SqliteJobStore(url.removeprefix("sqlite:///"))
    raise ValueError(f"JOB_STORE_URL must start with sqlite:/// or redis://, not {url!r}")
