"""The RunPod job path of this application under load: /runsync, and /run + /stream polling.

`/stream` is polled at two intervals: every second, as the `runpod` SDK's `job.stream()`
does, and every 50 ms, as an impatient client might. The second is a poll storm (32 clients
asking 20 times a second each): it measures what polls cost the engine more than the path
itself.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from typing import Any

import httpx

POLL_INTERVALS_S = (1.0, 0.05)  # the runpod SDK's; an aggressive client's


def _summary(latencies: list[float], tokens: int, wall: float) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "jobs_per_s": len(latencies) / wall,
        "output_tokens_per_s": tokens / wall,
        "median_latency_ms": statistics.median(ordered) * 1000,
        "p99_latency_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
    }


async def _runsync(client: httpx.AsyncClient, job: dict[str, Any]) -> tuple[float, int]:
    started = time.monotonic()
    response = (await client.post("/v2/bench/runsync", json={"input": job})).json()
    assert response["status"] == "COMPLETED", response
    return time.monotonic() - started, response["output"][-1]["usage"]["output"]


async def _stream(
    client: httpx.AsyncClient, job: dict[str, Any], poll_s: float
) -> tuple[float, float, int]:
    started = time.monotonic()
    job_id = (await client.post("/v2/bench/run", json={"input": {**job, "stream": True}})).json()[
        "id"
    ]
    first, tokens = None, 0
    while True:
        polled = (await client.get(f"/v2/bench/stream/{job_id}")).json()
        for chunk in polled["stream"]:
            first = first or time.monotonic() - started
            tokens = chunk["output"]["usage"]["output"]
        if polled["status"] not in ("IN_QUEUE", "IN_PROGRESS"):
            assert polled["status"] == "COMPLETED", polled
            return first or 0.0, time.monotonic() - started, tokens
        await asyncio.sleep(poll_s)


async def _measure(base_url: str, workload: Any) -> dict[str, Any]:
    numbers = itertools.count()

    def job() -> dict[str, Any]:
        """A prompt of its own (a number first): a repeated one would be prefilled from vLLM's
        prefix cache."""
        return {
            "prompt": f"{next(numbers)} " + "hello " * (workload.input_len - 1),
            "sampling_params": {
                "max_tokens": workload.output_len,
                "temperature": 0,
                "ignore_eos": True,
            },
        }

    count = min(workload.prompts, 64)
    limit = asyncio.Semaphore(workload.concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=600) as client:

        async def bounded(coro_fn, *args):
            async with limit:
                return await coro_fn(client, job(), *args)

        started = time.monotonic()
        sync = await asyncio.gather(*(bounded(_runsync) for _ in range(count)))
        sync_wall = time.monotonic() - started
        streams = []
        for poll_s in POLL_INTERVALS_S:
            started = time.monotonic()
            streamed = await asyncio.gather(*(bounded(_stream, poll_s) for _ in range(count)))
            wall = time.monotonic() - started
            stream = _summary([s[1] for s in streamed], sum(s[2] for s in streamed), wall)
            stream["median_first_output_ms"] = statistics.median(s[0] for s in streamed) * 1000
            streams.append({"poll_s": poll_s, **stream})
    return {
        "jobs": count,
        "concurrency": workload.concurrency,
        "runsync": _summary([s[0] for s in sync], sum(s[1] for s in sync), sync_wall),
        "stream": streams,
    }


def measure(base_url: str, workload: Any) -> dict[str, Any]:
    return asyncio.run(_measure(base_url, workload))
