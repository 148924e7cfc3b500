"""The default job store: an SQLite file on the node (JOB_STORE_URL=sqlite:///<path>).

Jobs survive the job queue's process and a redeploy on the same node, with nothing to run
beside the app. Every call runs on one thread of its own holding the connection, so a slow
disk never stalls the job queue's event loop. WAL journal with synchronous=NORMAL: a commit
costs no fsync (a power loss may lose the last moments; a process death loses nothing). On a
network volume (RunPod's /runpod-volume), SQLite's classic rollback journal instead: WAL needs
shared memory between processes, which network filesystems do not provide.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

from serve_app.jobs.store import (
    FINAL,
    IN_PROGRESS,
    IN_QUEUE,
    STATUSES,
    JobRecord,
    Summary,
    Unread,
)

_FINAL = "(" + ",".join(f"'{s}'" for s in sorted(FINAL)) + ")"
_COLUMNS = tuple(JobRecord.model_fields)
_JSON = {"input", "failure_output"}

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, endpoint TEXT NOT NULL, input TEXT, status TEXT NOT NULL,
    created REAL NOT NULL, started REAL, finished REAL, replica TEXT, error TEXT,
    failure_output TEXT, execution_timeout_s REAL, ttl_s REAL, retried INTEGER NOT NULL,
    owner TEXT, lease_until REAL NOT NULL, output_bytes INTEGER NOT NULL,
    read_upto INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_by_endpoint ON jobs (endpoint, status);
CREATE INDEX IF NOT EXISTS jobs_by_lease ON jobs (lease_until) WHERE status NOT IN {_FINAL};
CREATE INDEX IF NOT EXISTS jobs_by_finish ON jobs (finished) WHERE finished IS NOT NULL;
CREATE TABLE IF NOT EXISTS outputs (
    job_id TEXT NOT NULL, seq INTEGER NOT NULL, item TEXT NOT NULL, PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
"""


NETWORK_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs",
                       "lustre", "beegfs", "gpfs", "fuse")  # fmt: skip


def on_network_filesystem(path: str, mounts: str | None = None) -> bool:
    """Whether `path` lies on a network (or FUSE) filesystem, by the longest mount point
    above it in /proc/mounts (`mounts`: that file's text)."""
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            return False
    target = os.path.realpath(path)
    best, fs_type = "", ""
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) > len(best):
            best, fs_type = point, fields[2]
    return fs_type.split(".")[0] in NETWORK_FILESYSTEMS


class SqliteJobStore:
    def __init__(self, path: str):
        self.path = path
        # one thread owns the connection: calls are serialized without locks
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="job-store")
        self._db: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            # WAL needs memory shared between processes, which a network filesystem lacks
            journal = "DELETE" if on_network_filesystem(self.path) else "WAL"
            db.execute(f"PRAGMA journal_mode={journal}")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(SCHEMA)
            with contextlib.suppress(OSError):  # a filesystem without modes
                os.chmod(self.path, 0o600)  # jobs hold the users' data
            self._db = db
        return self._db

    async def _run(self, fn: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, lambda: fn(self._connect(), *args))

    # ------------------------------------------------------------------ records
    @staticmethod
    def _row(job: JobRecord) -> tuple[Any, ...]:
        data = job.model_dump()
        return tuple(json.dumps(data[c]) if c in _JSON else data[c] for c in _COLUMNS)

    @staticmethod
    def _record(row: sqlite3.Row | tuple[Any, ...]) -> JobRecord:
        data = dict(zip(_COLUMNS, row, strict=False))
        for column in _JSON:
            data[column] = json.loads(data[column]) if data[column] is not None else None
        return JobRecord(**data)

    async def create(self, job: JobRecord) -> None:
        sql = f"INSERT INTO jobs ({','.join(_COLUMNS)}) VALUES ({','.join('?' * len(_COLUMNS))})"
        row = self._row(job)
        await self._run(lambda db: db.execute(sql, row))

    async def get(self, job_id: str) -> JobRecord | None:
        sql = f"SELECT {','.join(_COLUMNS)} FROM jobs WHERE id = ?"
        row = await self._run(lambda db: db.execute(sql, (job_id,)).fetchone())
        return None if row is None else self._record(row)

    async def start(self, job_id: str, owner: str, replica: str, now: float) -> bool:
        sql = (
            "UPDATE jobs SET status = ?, started = ?, replica = ? "
            f"WHERE id = ? AND owner = ? AND status NOT IN {_FINAL}"
        )
        params = (IN_PROGRESS, now, replica, job_id, owner)
        cursor = await self._run(lambda db: db.execute(sql, params))
        return cursor.rowcount == 1

    async def finish(
        self,
        job_id: str,
        status: str,
        error: str | None,
        output: Any,
        now: float,
        only_if: str | None = None,
    ) -> bool:
        sql = (
            "UPDATE jobs SET status = ?, finished = ?, error = ?, failure_output = ?, "
            f"owner = NULL WHERE id = ? AND status NOT IN {_FINAL}"
        )
        encoded = None if output is None else json.dumps(output)
        params: tuple[Any, ...] = (status, now, error, encoded, job_id)
        if only_if is not None:
            sql, params = sql + " AND status = ?", (*params, only_if)
        cursor = await self._run(lambda db: db.execute(sql, params))
        return cursor.rowcount == 1

    async def requeue(self, job_id: str, owner: str) -> None:
        sql = (
            "UPDATE jobs SET status = ?, started = NULL, replica = NULL, "
            "retried = retried + 1 WHERE id = ? AND status = ? AND owner = ?"
        )
        await self._run(lambda db: db.execute(sql, (IN_QUEUE, job_id, IN_PROGRESS, owner)))

    # ------------------------------------------------------------------ outputs
    async def append_output(self, job_id: str, owner: str, encoded: str) -> int:
        size = len(encoded)

        def append(db: sqlite3.Connection) -> int:
            with db:  # one transaction
                db.execute("BEGIN IMMEDIATE")
                row = db.execute(
                    "UPDATE jobs SET output_bytes = output_bytes + ? WHERE id = ? AND owner = ? "
                    f"AND status NOT IN {_FINAL} RETURNING output_bytes",
                    (size, job_id, owner),
                ).fetchone()
                if row is None:
                    return -1
                db.execute(
                    "INSERT INTO outputs (job_id, seq, item) VALUES (?, "
                    "(SELECT COALESCE(MAX(seq), 0) + 1 FROM outputs WHERE job_id = ?), ?)",
                    (job_id, job_id, encoded),
                )
                return row[0]

        return await self._run(append)

    async def outputs(self, job_id: str) -> list[Any]:
        sql = "SELECT item FROM outputs WHERE job_id = ? ORDER BY seq"
        rows = await self._run(lambda db: db.execute(sql, (job_id,)).fetchall())
        return [json.loads(item) for (item,) in rows]

    async def take_unread(self, job_id: str, endpoint: str) -> Unread | None:
        def take(db: sqlite3.Connection) -> tuple[Any, ...] | None:
            with db:
                db.execute("BEGIN IMMEDIATE")
                found = db.execute(
                    "SELECT endpoint, status, error, read_upto FROM jobs WHERE id = ?", (job_id,)
                ).fetchone()
                if found is None or found[0] != endpoint:
                    return None
                rows = db.execute(
                    "SELECT seq, item FROM outputs WHERE job_id = ? AND seq > ? ORDER BY seq",
                    (job_id, found[3]),
                ).fetchall()
                if rows:
                    db.execute("UPDATE jobs SET read_upto = ? WHERE id = ?", (rows[-1][0], job_id))
                return (*found[:3], [item for _, item in rows])

        taken = await self._run(take)
        if taken is None:
            return None
        endpoint, status, error, items = taken
        return Unread(
            endpoint=endpoint, status=status, error=error, items=[json.loads(i) for i in items]
        )

    # ------------------------------------------------------------------ queries
    async def queued(self, endpoint: str) -> list[str]:
        sql = "SELECT id FROM jobs WHERE endpoint = ? AND status = ?"
        rows = await self._run(lambda db: db.execute(sql, (endpoint, IN_QUEUE)).fetchall())
        return [job_id for (job_id,) in rows]

    async def count_queued(self, endpoint: str) -> int:
        sql = "SELECT COUNT(*) FROM jobs WHERE endpoint = ? AND status = ?"
        (count,) = await self._run(lambda db: db.execute(sql, (endpoint, IN_QUEUE)).fetchone())
        return count

    async def summary(self, endpoint: str) -> Summary:
        def query(db: sqlite3.Connection) -> Summary:
            counts = dict.fromkeys(STATUSES, 0)
            for status, count in db.execute(
                "SELECT status, COUNT(*) FROM jobs WHERE endpoint = ? GROUP BY status",
                (endpoint,),
            ):
                counts[status] = count
            (busy,) = db.execute(
                "SELECT COUNT(DISTINCT replica) FROM jobs WHERE endpoint = ? AND status = ?",
                (endpoint, IN_PROGRESS),
            ).fetchone()
            (retried,) = db.execute(
                "SELECT COALESCE(SUM(retried), 0) FROM jobs WHERE endpoint = ?", (endpoint,)
            ).fetchone()
            return Summary(counts=counts, busy_replicas=busy, retried=retried)

        return await self._run(query)

    # ------------------------------------------------------------------ leases
    async def renew(self, owner: str, job_ids: list[str], until: float) -> list[str]:
        def renew(db: sqlite3.Connection) -> list[str]:
            lost = []
            with db:
                db.execute("BEGIN IMMEDIATE")
                for job_id in job_ids:
                    row = db.execute(
                        "SELECT status, owner FROM jobs WHERE id = ?", (job_id,)
                    ).fetchone()
                    if row is None or row[0] in FINAL or row[1] != owner:
                        lost.append(job_id)
                    else:
                        db.execute("UPDATE jobs SET lease_until = ? WHERE id = ?", (until, job_id))
            return lost

        return await self._run(renew)

    async def claim_orphans(self, owner: str, now: float, until: float) -> list[JobRecord]:
        def claim(db: sqlite3.Connection) -> list[JobRecord]:
            with db:
                db.execute("BEGIN IMMEDIATE")
                rows = db.execute(
                    f"UPDATE jobs SET owner = ?, lease_until = ? WHERE lease_until < ? "
                    f"AND status NOT IN {_FINAL} RETURNING {','.join(_COLUMNS)}",
                    (owner, until, now),
                ).fetchall()
            return [self._record(row) for row in rows]

        return await self._run(claim)

    async def release(self, owner: str, job_ids: list[str]) -> None:
        sql = "UPDATE jobs SET lease_until = 0 WHERE id = ? AND owner = ?"
        await self._run(lambda db: db.executemany(sql, [(job_id, owner) for job_id in job_ids]))

    async def expire(self, finished_before: float) -> int:
        def expire(db: sqlite3.Connection) -> int:
            with db:  # a batch per transaction: the lock is never held long
                db.execute("BEGIN IMMEDIATE")
                ids = [
                    (job_id,)
                    for (job_id,) in db.execute(
                        "SELECT id FROM jobs WHERE finished < ? LIMIT 1000", (finished_before,)
                    )
                ]
                db.executemany("DELETE FROM outputs WHERE job_id = ?", ids)
                db.executemany("DELETE FROM jobs WHERE id = ?", ids)
                return len(ids)

        total = 0
        while (dropped := await self._run(expire)) > 0:
            total += dropped
        return total

    async def close(self) -> None:
        def close(db: sqlite3.Connection) -> None:
            db.close()

        if self._db is not None:
            await self._run(close)
            self._db = None
        self._thread.shutdown(wait=False)
