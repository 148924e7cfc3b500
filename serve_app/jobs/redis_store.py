"""The job store for clusters: Redis (JOB_STORE_URL=redis://host:port/db), shared by job
queue replicas on any node, so the job path has no single process to lose.

Per job: a hash of its fields (`<ns>job:<id>`), its input as sent (`...:in`, never parsed
by Redis) and its output items (`...:out`, a list). Indexes: per endpoint and status, a set
of ids; the unfinished jobs by lease end and the finished ones by finish time (sorted sets).
Every state change is one Lua script, so it is atomic however many replicas share the store.
"""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as redis

from serve_app.jobs.store import (
    FINAL,
    IN_PROGRESS,
    IN_QUEUE,
    STATUSES,
    JobRecord,
    Summary,
    Unread,
)

_FINAL_LUA = "{" + ", ".join(f"['{s}'] = true" for s in sorted(FINAL)) + "}"
_PRELUDE = f"""
local final = {_FINAL_LUA}
local ns = ARGV[1]
local function key(id) return ns .. 'job:' .. id end
local function status_set(endpoint, status) return ns .. 'ep:' .. endpoint .. ':' .. status end
local function move(id, endpoint, from, to)
  redis.call('SREM', status_set(endpoint, from), id)
  redis.call('SADD', status_set(endpoint, to), id)
end
"""

# KEYS: none (one Redis, not a cluster: the scripts touch keys they compute). ARGV[1]: ns.
START = (
    _PRELUDE
    + """
local id, owner, replica, now = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local status, endpoint, holder = unpack(
  redis.call('HMGET', key(id), 'status', 'endpoint', 'owner'))
if not status or final[status] or holder ~= owner then return 0 end
move(id, endpoint, status, 'IN_PROGRESS')
redis.call('HSET', key(id), 'status', 'IN_PROGRESS', 'started', now, 'replica', replica)
return 1
"""
)
FINISH = (
    _PRELUDE
    + """
local id, to, now, err, output, only_if = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local status, endpoint = unpack(redis.call('HMGET', key(id), 'status', 'endpoint'))
if not status or final[status] then return 0 end
if only_if ~= '' and status ~= only_if then return 0 end
move(id, endpoint, status, to)
redis.call('HSET', key(id), 'status', to, 'finished', now, 'error', err,
  'failure_output', output, 'owner', '')
redis.call('ZREM', ns .. 'leases', id)
redis.call('ZADD', ns .. 'finished', now, id)
return 1
"""
)
REQUEUE = (
    _PRELUDE
    + """
local id, owner = ARGV[2], ARGV[3]
local status, endpoint, holder = unpack(
  redis.call('HMGET', key(id), 'status', 'endpoint', 'owner'))
if status ~= 'IN_PROGRESS' or holder ~= owner then return 0 end
move(id, endpoint, status, 'IN_QUEUE')
redis.call('HSET', key(id), 'status', 'IN_QUEUE', 'started', '', 'replica', '')
redis.call('HINCRBY', key(id), 'retried', 1)
redis.call('INCR', ns .. 'ep:' .. endpoint .. ':retried')
return 1
"""
)
APPEND = (
    _PRELUDE
    + """
local id, owner, item, size = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local status, holder = unpack(redis.call('HMGET', key(id), 'status', 'owner'))
if not status or final[status] or holder ~= owner then return -1 end
redis.call('RPUSH', key(id) .. ':out', item)
return redis.call('HINCRBY', key(id), 'output_bytes', size)
"""
)
TAKE_UNREAD = (
    _PRELUDE
    + """
local id, asked = ARGV[2], ARGV[3]
local endpoint, status, err, upto = unpack(
  redis.call('HMGET', key(id), 'endpoint', 'status', 'error', 'read_upto'))
if not status or endpoint ~= asked then return false end
local items = redis.call('LRANGE', key(id) .. ':out', tonumber(upto), -1)
redis.call('HSET', key(id), 'read_upto', tonumber(upto) + #items)
return {endpoint, status, err, items}
"""
)
RENEW = (
    _PRELUDE
    + """
local owner, lease = ARGV[2], ARGV[3]
local lost = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  local status, holder = unpack(redis.call('HMGET', key(id), 'status', 'owner'))
  if not status or final[status] or holder ~= owner then
    table.insert(lost, id)
  else
    redis.call('ZADD', ns .. 'leases', lease, id)
  end
end
return lost
"""
)
CLAIM = (
    _PRELUDE
    + """
local owner, now, lease = ARGV[2], ARGV[3], ARGV[4]
local ids = redis.call('ZRANGEBYSCORE', ns .. 'leases', '-inf', '(' .. now, 'LIMIT', 0, 1000)
local claimed = {}
for _, id in ipairs(ids) do
  local status = redis.call('HGET', key(id), 'status')
  if status and not final[status] then
    redis.call('HSET', key(id), 'owner', owner)
    redis.call('ZADD', ns .. 'leases', lease, id)
    table.insert(claimed, id)
  else
    redis.call('ZREM', ns .. 'leases', id)
  end
end
return claimed
"""
)
RELEASE = (
    _PRELUDE
    + """
local owner = ARGV[2]
for i = 3, #ARGV do
  local id = ARGV[i]
  if redis.call('HGET', key(id), 'owner') == owner then
    redis.call('ZADD', ns .. 'leases', 'XX', 0, id)
  end
end
return 0
"""
)
EXPIRE = (
    _PRELUDE
    + """
local before = ARGV[2]
local ids = redis.call('ZRANGEBYSCORE', ns .. 'finished', '-inf', '(' .. before, 'LIMIT', 0, 1000)
for _, id in ipairs(ids) do
  local status, endpoint, retried = unpack(
    redis.call('HMGET', key(id), 'status', 'endpoint', 'retried'))
  if status then
    redis.call('SREM', status_set(endpoint, status), id)
    local r = tonumber(retried) or 0
    if r > 0 then redis.call('DECRBY', ns .. 'ep:' .. endpoint .. ':retried', r) end
  end
  redis.call('DEL', key(id), key(id) .. ':in', key(id) .. ':out')
  redis.call('ZREM', ns .. 'finished', id)
end
return #ids
"""
)

_NUMBERS = {"created", "started", "finished", "execution_timeout_s", "ttl_s", "lease_until"}
_INTEGERS = {"retried", "output_bytes"}


class RedisJobStore:
    def __init__(self, url: str, namespace: str = ""):
        self.url = url
        self._ns = f"{namespace}:" if namespace else ""
        self._redis = redis.Redis.from_url(
            url, decode_responses=True, socket_timeout=10, socket_connect_timeout=10
        )
        self._scripts = {
            name: self._redis.register_script(text)
            for name, text in {
                "start": START,
                "finish": FINISH,
                "requeue": REQUEUE,
                "append": APPEND,
                "take": TAKE_UNREAD,
                "renew": RENEW,
                "claim": CLAIM,
                "release": RELEASE,
                "expire": EXPIRE,
            }.items()
        }

    def _key(self, job_id: str) -> str:
        return f"{self._ns}job:{job_id}"

    async def _script(self, name: str, *args: Any) -> Any:
        return await self._scripts[name](args=[self._ns, *args])

    # ------------------------------------------------------------------ records
    async def create(self, job: JobRecord) -> None:
        fields: dict[str, Any] = {}
        for name, value in job.model_dump(exclude={"input"}).items():
            if name == "failure_output":
                value = "" if value is None else json.dumps(value)
            fields[name] = "" if value is None else value
        fields["read_upto"] = 0
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._key(job.id), mapping=fields)
            pipe.set(self._key(job.id) + ":in", json.dumps(job.input))
            pipe.sadd(f"{self._ns}ep:{job.endpoint}:{job.status}", job.id)
            pipe.zadd(f"{self._ns}leases", {job.id: job.lease_until})
            await pipe.execute()

    async def get(self, job_id: str) -> JobRecord | None:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self._key(job_id))
            pipe.get(self._key(job_id) + ":in")
            pipe.zscore(f"{self._ns}leases", job_id)
            fields, raw_input, lease = await pipe.execute()
        if not fields:
            return None
        data: dict[str, Any] = {"id": job_id, "input": json.loads(raw_input or "null")}
        fields["lease_until"] = lease or 0.0  # kept in the sorted set, not the hash
        for name in JobRecord.model_fields:
            if name in data or name not in fields:
                continue
            value = fields[name]
            if value == "":
                data[name] = None if name != "lease_until" else 0.0
            elif name in _NUMBERS:
                data[name] = float(value)
            elif name in _INTEGERS:
                data[name] = int(value)
            elif name == "failure_output":
                data[name] = json.loads(value)
            else:
                data[name] = value
        return JobRecord(**data)

    async def start(self, job_id: str, owner: str, replica: str, now: float) -> bool:
        return bool(await self._script("start", job_id, owner, replica, now))

    async def finish(
        self,
        job_id: str,
        status: str,
        error: str | None,
        output: Any,
        now: float,
        only_if: str | None = None,
    ) -> bool:
        encoded = "" if output is None else json.dumps(output)
        args = (job_id, status, now, error or "", encoded, only_if or "")
        return bool(await self._script("finish", *args))

    async def requeue(self, job_id: str, owner: str) -> None:
        await self._script("requeue", job_id, owner)

    # ------------------------------------------------------------------ outputs
    async def append_output(self, job_id: str, owner: str, encoded: str) -> int:
        return int(await self._script("append", job_id, owner, encoded, len(encoded)))

    async def outputs(self, job_id: str) -> list[Any]:
        return [
            json.loads(item) for item in await self._redis.lrange(self._key(job_id) + ":out", 0, -1)
        ]

    async def take_unread(self, job_id: str, endpoint: str) -> Unread | None:
        taken = await self._script("take", job_id, endpoint)
        if not taken:
            return None
        endpoint, status, error, items = taken
        return Unread(
            endpoint=endpoint,
            status=status,
            error=error or None,
            items=[json.loads(item) for item in items],
        )

    # ------------------------------------------------------------------ queries
    async def queued(self, endpoint: str) -> list[str]:
        return list(await self._redis.smembers(f"{self._ns}ep:{endpoint}:{IN_QUEUE}"))

    async def count_queued(self, endpoint: str) -> int:
        return int(await self._redis.scard(f"{self._ns}ep:{endpoint}:{IN_QUEUE}"))

    async def summary(self, endpoint: str) -> Summary:
        prefix = f"{self._ns}ep:{endpoint}:"
        async with self._redis.pipeline(transaction=False) as pipe:
            for status in STATUSES:
                pipe.scard(prefix + status)
            pipe.smembers(prefix + IN_PROGRESS)
            pipe.get(prefix + "retried")
            *counts, running, retried = await pipe.execute()
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id in running:
                pipe.hget(self._key(job_id), "replica")
            replicas = await pipe.execute() if running else []
        return Summary(
            counts=dict(zip(STATUSES, map(int, counts), strict=True)),
            busy_replicas=len({r for r in replicas if r}),
            retried=int(retried or 0),
        )

    # ------------------------------------------------------------------ leases
    async def renew(self, owner: str, job_ids: list[str], until: float) -> list[str]:
        return list(await self._script("renew", owner, until, *job_ids))

    async def claim_orphans(self, owner: str, now: float, until: float) -> list[JobRecord]:
        ids = await self._script("claim", owner, now, until)
        records = [await self.get(job_id) for job_id in ids]
        return [record for record in records if record is not None]

    async def release(self, owner: str, job_ids: list[str]) -> None:
        if job_ids:
            await self._script("release", owner, *job_ids)

    async def expire(self, finished_before: float) -> int:
        total = 0
        while (dropped := int(await self._script("expire", finished_before))) > 0:
            total += dropped
        return total

    async def close(self) -> None:
        await self._redis.aclose()
