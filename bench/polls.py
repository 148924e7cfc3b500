"""What one RunPod job poll costs this app: latency and CPU per poll, by process.

    python bench/polls.py                                        # as configured
    python bench/polls.py --rounds 2 --variant grpc RAY_SERVE_USE_GRPC_BY_DEFAULT=1

Starts this application on the overhead workload's tiny model (as bench/run.py does), runs
one streamed job to its end, then polls it one request at a time: `/stream` and `/status`,
which cross from the ingress (the LLM replica) to the job queue's replica, and `/v1/models`,
which the ingress answers alone (the floor). For each it prints the median latency and the
CPU milliseconds per poll of every process that used some (psutil). Variants start the app
again with the given variables added to its environment (as bench/variants.py), alternated
with the app as configured. Polling clients (the runpod SDK's `stream()`, dashboards) make
these requests all the time, beside the generation they wait for.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import run  # noqa: E402
from bench.cpu import cpu_seconds  # noqa: E402

WARM_UP = 30
# vLLM's engine processes busy-poll their shared-memory queue for 1 s after their last
# message (shm_broadcast's busy_loop_s); polls start after it, so it is not counted as theirs.
ENGINE_SPIN_S = 2.0


def finished_job(client: httpx.Client) -> str:
    """The id of a streamed job that ran to its end (its outputs already read)."""
    job = {"prompt": "hello", "stream": True, "sampling_params": {"max_tokens": 8}}
    job_id = client.post("/v2/bench/run", json={"input": job}).json()["id"]
    deadline = time.monotonic() + 60
    while (status := client.get(f"/v2/bench/status/{job_id}").json())["status"] != "COMPLETED":
        if status["status"] in ("FAILED", "CANCELLED", "TIMED_OUT"):
            raise RuntimeError(f"job {job_id} ended {status['status']}: {status.get('error')}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} did not complete in 60 s")
        time.sleep(0.1)
    client.get(f"/v2/bench/stream/{job_id}")
    time.sleep(ENGINE_SPIN_S)
    return job_id


def poll(client: httpx.Client, path: str, count: int) -> tuple[float, dict[str, float]]:
    """Median latency (ms) of `count` sequential GETs of `path`, and CPU ms per GET by process."""
    for _ in range(WARM_UP):
        client.get(path)
    before = cpu_seconds()
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        response = client.get(path)
        latencies.append(time.perf_counter() - started)
        response.raise_for_status()
    after = cpu_seconds()
    used: dict[str, float] = defaultdict(float)
    for pid, (name, seconds) in after.items():
        if pid != os.getpid() and pid in before:
            used[name] += 1000 * (seconds - before[pid][1]) / count
    return 1000 * statistics.median(latencies), used


def measure(workload: run.Workload, name: str, count: int, logs: Path) -> None:
    port = run.free_port()
    with (
        run.our_server(workload, port, logs / f"polls-{name}.log"),
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client,
    ):
        job_id = finished_job(client)
        paths = {"stream": f"/v2/bench/stream/{job_id}",
                 "status": f"/v2/bench/status/{job_id}", "models": "/v1/models"}  # fmt: skip
        for label, path in paths.items():
            latency, used = poll(client, path, count)
            shown = sorted((kv for kv in used.items() if kv[1] >= 0.05), key=lambda kv: -kv[1])
            print(f"[polls] {name} {label}: median {latency:.2f} ms; CPU ms per poll "
                  f"{sum(used.values()):.2f}: "
                  + ", ".join(f"{process} {ms:.2f}" for process, ms in shown),
                  flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--polls", type=int, default=500, help="sequential polls per route")
    run.add_variant_option(parser)
    ns = parser.parse_args()
    variants = {"as configured": {}} | run.variants_of(ns)
    logs = run.CACHE / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    base = run.workloads(["overhead"])[0]
    for index in range(ns.rounds):
        order = list(variants.items())
        for name, env in order if index % 2 == 0 else reversed(order):
            served = dataclasses.replace(base, env={**base.env, **env})
            measure(served, name, ns.polls, logs)


if __name__ == "__main__":
    main()
