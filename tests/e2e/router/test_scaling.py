"""Several models behind one router ingress (two replicas; the app: conftest.py): listing and
routing by `model`, job state shared by the router replicas and by two job queue replicas on a
real Redis (a runsync burst above the capacity of tiny-a's two LLM replicas), jobs scoped to
their endpoint id, and a model scaled to zero that starts on demand — read from Serve's own
status, on the real engine on CPU. Autoscaling by load with one model (the LLM replicas as the
ingress): test_autoscaling.py."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest
import requests
from ray import serve

from tests.conftest import wait_for

pytestmark = pytest.mark.e2e


def test_both_models_are_listed_and_requests_must_name_one(app):
    client = app.openai()
    assert sorted(m.id for m in client.models.list()) == ["tiny-a", "tiny-b", "tiny-embed"]
    with pytest.raises(openai.BadRequestError, match="`model` is required"):
        client.completions.create(model=None, prompt="hi", max_tokens=2)  # type: ignore[arg-type]
    reply = client.completions.create(model="tiny-a", prompt="hi", max_tokens=3)
    assert reply.model == "tiny-a" and reply.usage.completion_tokens <= 3


def test_job_state_is_shared_by_every_ingress_replica(app):
    assert app.plan.ingress.mode == "router"
    ingress = serve.status().applications[app.name].deployments["Ingress"]
    assert ingress.replica_states.get("RUNNING") == 2
    url = f"{app.base_url}/v2/shared/"
    body = {"input": {"model": "tiny-a", "prompt": "x", "sampling_params": {"max_tokens": 2}}}
    job_id = requests.post(url + "run", json=body, timeout=30).json()["id"]
    # HAProxy spreads these over both ingress replicas; every one must know the job.
    for _ in range(20):
        assert requests.get(url + f"status/{job_id}", timeout=30).json()["id"] == job_id


JOB = {"model": "tiny-a", "prompt": "x", "sampling_params": {"max_tokens": 2}}


def job_queue_owners(app) -> set[str]:
    """The job queue replicas that answer: Serve spreads calls over all of them."""
    handle = app.handle("JobQueue")
    return {handle.stats.remote().result()["owner"] for _ in range(30)}


def test_two_job_queue_replicas_on_redis_answer_for_each_others_jobs(app):
    wait_for(lambda: len(job_queue_owners(app)) == 2, timeout=60)
    url = f"{app.base_url}/v2/shared/"
    ids = [
        requests.post(url + "run", json={"input": JOB}, timeout=30).json()["id"] for _ in range(8)
    ]
    statuses: dict[str, str] = {}
    for _ in range(100):  # each poll reaches either queue replica; each job lives in one
        for job_id in ids:
            response = requests.get(url + f"status/{job_id}", timeout=30)
            assert response.status_code == 200, response.text
            statuses[job_id] = response.json()["status"]
        if set(statuses.values()) == {"COMPLETED"}:
            break
        time.sleep(0.2)
    assert set(statuses.values()) == {"COMPLETED"}
    # runsync answers whichever replica runs it; the output is stored once
    synced = requests.post(url + "runsync", json={"input": JOB}, timeout=60).json()
    assert synced["status"] == "COMPLETED" and synced["output"][0]["usage"]["output"] == 2


def test_a_runsync_burst_above_capacity_completes_while_health_keeps_answering(app):
    async def burst() -> tuple[list[dict], list[float]]:
        health_times: list[float] = []
        async with httpx.AsyncClient(base_url=app.base_url, timeout=120) as client:
            job = {"input": {**JOB, "sampling_params": {"max_tokens": 32, "ignore_eos": True}}}
            calls = [client.post("/v2/burst/runsync", json=job) for _ in range(16)]
            running = asyncio.gather(*calls)
            while not running.done():
                started = time.monotonic()
                # (503 while tiny-b is scaled to zero: the answer, not its verdict, counts)
                assert (await client.get("/health")).status_code in (200, 503)
                health_times.append(time.monotonic() - started)
                await asyncio.sleep(0.2)
            return [r.json() for r in await running], health_times

    results, health_times = asyncio.run(burst())
    assert [r["status"] for r in results] == ["COMPLETED"] * 16
    assert len({r["workerId"] for r in results}) == 2  # both LLM replicas ran jobs
    assert all(r["output"][0]["usage"]["output"] == 32 for r in results)
    print(f"\n/health during the burst: {len(health_times)} polls, slowest "
          f"{max(health_times) * 1000:.0f} ms")  # fmt: skip


def test_jobs_belong_to_the_endpoint_id_they_were_submitted_under(app):
    base = f"{app.base_url}/v2/"
    long = {**JOB, "sampling_params": {"max_tokens": 30000, "ignore_eos": True}}
    job_id = requests.post(base + "A/run", json={"input": long}, timeout=30).json()["id"]
    wait_for(lambda: requests.get(base + f"A/status/{job_id}", timeout=30).status_code == 200)
    for path in (f"status/{job_id}", f"stream/{job_id}"):
        assert requests.get(base + "B/" + path, timeout=30).status_code == 404
    assert requests.post(base + f"B/cancel/{job_id}", timeout=30).status_code == 404
    assert requests.post(base + "B/purge-queue", timeout=30).json()["removed"] == 0
    health_b = requests.get(base + "B/health", timeout=30).json()["jobs"]
    assert health_b["inProgress"] == 0 and health_b["inQueue"] == 0
    health_a = requests.get(base + "A/health", timeout=30).json()["jobs"]
    assert health_a["inProgress"] + health_a["inQueue"] == 1
    cancelled = requests.post(base + f"A/cancel/{job_id}", timeout=30).json()
    assert cancelled["status"] == "CANCELLED"


def test_a_model_scaled_to_zero_starts_on_demand(app):
    assert app.running_replicas("LLM-tiny-b") == 0
    started = time.monotonic()
    reply = app.openai().completions.create(
        model="tiny-b", prompt="hello", max_tokens=4, temperature=0, extra_body={"ignore_eos": True}
    )
    waited = time.monotonic() - started
    assert reply.usage.completion_tokens == 4
    assert app.running_replicas("LLM-tiny-b") == 1
    print(f"first request to a scaled-to-zero model answered after {waited:.0f} s")
    # (scaling back in is Serve's autoscaler alone: test_autoscaling.py watches it)
