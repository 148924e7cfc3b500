"""Autoscaling with one model, the product's default shape: the LLM replicas are the HTTP
ingress behind HAProxy. From zero replicas on the first request, out to two under load (both
answering HTTP and running jobs), and back in when the load stops — read from Serve's own
status, on the real engine on CPU. (Several models behind the router: router/test_scaling.py.)"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests

from tests.conftest import wait_for

pytestmark = pytest.mark.e2e

LONG = {"max_tokens": 30000, "temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def app(serve_cluster, tiny_model: Path, tmp_path_factory):
    env = {
        "MODEL_NAME": str(tiny_model),
        "OPENAI_SERVED_MODEL_NAME_OVERRIDE": "tiny",
        "MIN_REPLICAS": "0",
        "MAX_REPLICAS": "2",
        "TARGET_ONGOING_REQUESTS": "2",
        "MAX_CONCURRENCY": "4",
        "UPSCALE_DELAY_S": "1",
        "DOWNSCALE_DELAY_S": "5",
        "BASE_PATH": str(tmp_path_factory.mktemp("base")),
        "DISABLE_LOG_STATS": "1",
    }
    with serve_cluster.deployed(env) as app:
        yield app


def ask(app) -> int:
    """One short chat request (with no replica running, it starts one): its tokens."""
    reply = app.openai().chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=4,
        extra_body={"ignore_eos": True},
    )
    return reply.usage.completion_tokens


def test_the_first_request_starts_a_replica_and_waits_for_it(app):
    assert app.plan.ingress.mode == "llm" and app.running_replicas() == 0
    started = time.monotonic()
    assert ask(app) == 4
    assert app.running_replicas() == 1
    print(f"\nfirst request with no replica answered after {time.monotonic() - started:.0f} s")


def test_load_scales_out_to_two_replicas_that_both_serve_then_in_again(app):
    url = f"{app.base_url}/v2/load/"

    def run(i: int) -> str:
        body = {"input": {"prompt": f"load {i}", "sampling_params": LONG}}
        return requests.post(url + "run", json=body, timeout=30).json()["id"]

    assert ask(app) == 4  # one replica runs, also when this test runs alone
    wait_for(lambda: app.running_replicas() == 1, timeout=60, interval=1.0)
    # 8 long jobs: 4 run (MAX_CONCURRENCY), 4 wait; 4 ongoing / target 2 asks for 2 replicas
    jobs = [run(i) for i in range(8)]
    wait_for(lambda: app.running_replicas() == 2, timeout=240, interval=1.0)

    def workers() -> set[str]:
        statuses = [requests.get(url + f"status/{j}", timeout=30).json() for j in jobs]
        return {s["workerId"] for s in statuses if s["status"] == "IN_PROGRESS"}

    assert len(wait_for(lambda: len(workers()) == 2 and workers(), timeout=120, interval=1.0)) == 2
    # HTTP reaches both replicas too: HAProxy spreads requests over the ingress replicas once
    # Serve's HAProxy manager has learnt of the new one (by long poll) and reloaded HAProxy,
    # some seconds after Serve counts it RUNNING; this measures how long that took.
    answered: set[str] = set()
    counted = time.monotonic()

    def both_answer() -> bool:
        answered.add(requests.get(app.base_url + "/health", timeout=30).json()["replica"])
        return len(answered) == 2

    wait_for(both_answer, timeout=60, interval=0.2)
    print(
        f"\nHAProxy routed to both replicas {time.monotonic() - counted:.1f} s after both ran jobs"
    )

    for job in jobs:
        requests.post(url + f"cancel/{job}", timeout=30)
    wait_for(lambda: app.running_replicas() <= 1, timeout=180, interval=1.0)
