"""Runtime LoRA loading (VLLM_ALLOW_RUNTIME_LORA_UPDATING) on a deployment of two replicas:
an adapter loaded once, through whichever replica the request reached, is listed and answered
by both, and by a replica that starts later (one replica killed and replaced); unloaded once,
it is gone from all. The real app, the real engine on CPU, Ray's own key-value store."""

from __future__ import annotations

import concurrent.futures
import os
import signal
from pathlib import Path

import httpx
import pytest

from tests.conftest import wait_for

pytestmark = pytest.mark.e2e

PROMPT = {"prompt": "Hello world", "max_tokens": 6, "temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def app(serve_cluster, tiny_model: Path, tmp_path_factory):
    env = {
        "MODEL_NAME": str(tiny_model),
        "OPENAI_SERVED_MODEL_NAME_OVERRIDE": "tiny",
        "BASE_PATH": str(tmp_path_factory.mktemp("base")),
        "DISABLE_LOG_STATS": "1",
        "ENABLE_LORA": "1",
        "MAX_LORA_RANK": "8",
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1",
        "MIN_REPLICAS": "2",
        "MAX_REPLICAS": "2",
    }
    with serve_cluster.deployed(env) as app:
        yield app


def replicas(app) -> dict[int, list[str]]:
    """pid -> runtime adapters of each replica, until two distinct replicas answered."""
    seen: dict[int, list[str]] = {}

    def both() -> bool:
        try:
            stats = app.handle().stats.remote().result(timeout_s=30)
        except Exception:  # a replica that was just killed, until Serve notices
            return False
        seen[stats["pid"]] = stats["lora_adapters"]
        return len(seen) >= 2

    wait_for(both, timeout=60, interval=0.05)
    return seen


def complete(app, model: str) -> httpx.Response:
    return httpx.post(app.base_url + "/v1/completions", json={"model": model, **PROMPT}, timeout=60)


def test_an_adapter_loaded_once_is_served_by_every_replica_and_by_later_ones(app, tiny_lora):
    base = complete(app, "tiny").json()["choices"][0]["text"]
    assert complete(app, "runtime").status_code == 404
    load = {"lora_name": "runtime", "lora_path": str(tiny_lora)}
    response = httpx.post(app.base_url + "/v1/load_lora_adapter", json=load, timeout=60)
    assert response.status_code == 200, response.text

    wait_for(lambda: all(v == ["runtime"] for v in replicas(app).values()), timeout=30)
    for _ in range(6):  # /v1/models of whichever replica answers lists it
        ids = [m["id"] for m in httpx.get(app.base_url + "/v1/models").json()["data"]]
        assert "runtime" in ids
    with concurrent.futures.ThreadPoolExecutor(6) as pool:  # spread over both replicas
        answers = list(pool.map(lambda _: complete(app, "runtime"), range(6)))
    texts = {a.json()["choices"][0]["text"] for a in answers}
    assert len(texts) == 1 and base not in texts  # the adapter's output, on each replica

    # A replica that starts later (this one replaces a killed one) loads it before serving.
    before = replicas(app)
    victim = next(iter(before))
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: set(replicas(app)) - set(before), timeout=300, interval=1)
    after = {pid: adapters for pid, adapters in replicas(app).items() if pid != victim}
    new = set(after) - set(before)
    assert new and all(after[pid] == ["runtime"] for pid in new)

    unload = httpx.post(
        app.base_url + "/v1/unload_lora_adapter", json={"lora_name": "runtime"}, timeout=60
    )
    assert unload.status_code == 200, unload.text
    wait_for(lambda: all(v == [] for pid, v in replicas(app).items() if pid != victim), timeout=30)
    assert complete(app, "runtime").status_code == 404


def test_a_bad_adapter_path_is_refused_and_not_shared(app):
    load = {"lora_name": "broken", "lora_path": "/nowhere/adapter"}
    response = httpx.post(app.base_url + "/v1/load_lora_adapter", json=load, timeout=60)
    assert 400 <= response.status_code < 500, response.text
    assert "error" in response.json()
    assert all("broken" not in v for v in replicas(app).values())
