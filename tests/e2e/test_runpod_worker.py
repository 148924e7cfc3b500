"""The same code as a classic RunPod serverless worker, run in runpod's local test mode
(`--rp_serve_api`): one engine in the worker process, worker-vllm's inputs and outputs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests

from tests.conftest import free_port, stop_processes

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
GREEDY = {"temperature": 0, "ignore_eos": True}


def worker_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MODEL_"))}
    return {**env, **extra}


class WorkerURL(str):
    """The worker's base URL, and its log."""

    log: Path


@pytest.fixture(scope="module")
def worker(tiny_model, tmp_path_factory):
    port = free_port()
    log = (tmp_path_factory.mktemp("worker") / "worker.log").open("w")
    env = worker_env(
        MODEL_NAME=str(tiny_model),
        MAX_CONCURRENCY="4",
        BASE_PATH=str(tmp_path_factory.mktemp("base")),
    )
    command = [sys.executable, "-m", "serve_app.runpod_worker", "--rp_serve_api",
               "--rp_api_host", "127.0.0.1", "--rp_api_port", str(port)]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = WorkerURL(f"http://127.0.0.1:{port}")
    url.log = Path(log.name)
    tree: dict[int, psutil.Process] = {}
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert process.poll() is None, f"worker exited: see {log.name}"
            try:
                if requests.get(url + "/docs", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.5)
        yield url
    finally:
        tree = {p.pid: p for p in psutil.Process(process.pid).children(recursive=True)}
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        stop_processes(list(tree.values()))
        log.close()


def runsync(url: str, job_input: dict) -> dict:
    response = requests.post(url + "/runsync", json={"input": job_input}, timeout=300)
    assert response.status_code == 200, response.text
    return response.json()


def test_worker_runs_a_prompt_job(worker):
    result = runsync(worker, {"prompt": "Hello", "sampling_params": {"max_tokens": 6, **GREEDY}})
    assert result["status"] == "COMPLETED"
    (item,) = result["output"]
    assert item["usage"]["output"] == 6
    assert len(item["choices"]) == 1 and len(item["choices"][0]["tokens"]) == 1
    # as `vllm serve` does once its engine is up (vllm_engine.freeze_startup_heap)
    assert "start-up objects frozen out of garbage collection" in worker.log.read_text()


def test_worker_streams_growing_batches(worker):
    result = runsync(
        worker,
        {"messages": [{"role": "user", "content": "Hi"}], "stream": True,
         "sampling_params": {"max_tokens": 50, **GREEDY}},
    )  # fmt: skip
    sizes = [sum(len(c["tokens"]) for c in item["choices"]) for item in result["output"]]
    assert sizes == [1, 3, 9, 27, 10]


def test_worker_wraps_every_openai_route_of_the_model(worker):
    """`openai_route` takes any OpenAI-shaped route the model serves, here the Responses API
    and tokenization-free /v1/models, through the same model API as the Ray Serve app."""
    responses = {"input": "Hi", "max_output_tokens": 3}
    result = runsync(worker, {"openai_route": "/v1/responses", "openai_input": responses})
    (response,) = result["output"]
    assert response["object"] == "response" and response["usage"]["output_tokens"] == 3
    (listing,) = runsync(worker, {"openai_route": "/v1/models"})["output"]
    assert listing["data"][0]["object"] == "model"


def test_worker_reports_bad_input(worker):
    result = runsync(worker, {"prompt": "x", "sampling_params": {"bogus": 1}})
    # runpod's local API shows the handler's error item; on RunPod the job is FAILED with it
    (item,) = result["output"]
    assert "unknown sampling parameter" in item["error"]


def test_worker_concurrency_follows_max_concurrency(tiny_model):
    from serve_app.config.plan import build_plan
    from serve_app.engine import args as vllm_args
    from serve_app.runpod_worker import Worker

    plan = build_plan(
        {"MODEL_NAME": str(tiny_model), "MAX_CONCURRENCY": "7"},
        engine_args=vllm_args,
        platform="cpu",
    )
    assert Worker(plan.models[0]).concurrency(1) == 7


def test_worker_with_bad_env_exits_2():
    result = subprocess.run(
        [sys.executable, "-m", "serve_app.runpod_worker"],
        cwd=ROOT,
        env=worker_env(MAX_MODEL_LEN="abc"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "MAX_MODEL_LEN='abc': expected an integer" in result.stderr
