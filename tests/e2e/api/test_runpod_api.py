"""RunPod's job API end to end: the real app and engine on CPU, the `runpod` SDK as the client.

The app (conftest.py: one model, its LLM replica the HTTP ingress) runs with MAX_CONCURRENCY=2
(so jobs queue), MAX_QUEUED_JOBS=6, an API key, and a fixed endpoint id; its jobs are in the
default store (SQLite under BASE_PATH), which outlives the job queue's process and a redeploy.
Jobs shared by several ingress and job queue replicas (Redis): tests/e2e/router/test_scaling.py.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import psutil
import pytest
import requests
import runpod

from tests.conftest import wait_for
from tests.contracts import validate
from tests.e2e.api.conftest import API_KEY, ENDPOINT

pytestmark = pytest.mark.e2e

GREEDY = {"temperature": 0, "ignore_eos": True}
LONG = {"max_tokens": 30000, **GREEDY}  # minutes of generation: only ends by cancel/timeout


@pytest.fixture
def endpoint(app) -> runpod.Endpoint:
    runpod.endpoint_url_base = app.base_url + "/v2"  # what RUNPOD_ENDPOINT_BASE_URL sets
    return runpod.Endpoint(ENDPOINT, api_key=API_KEY)


def api(app, method: str, path: str, key: str | None = API_KEY, **kwargs) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return requests.request(
        method, f"{app.base_url}/v2/{ENDPOINT}/{path}", headers=headers, timeout=120, **kwargs
    )


def tokens_per_item(items: list[dict]) -> list[int]:
    return [sum(len(choice["tokens"]) for choice in item["choices"]) for item in items]


def text_of(items: list[dict], choice: int = 0) -> str:
    return "".join("".join(item["choices"][choice]["tokens"]) for item in items)


# ---------------------------------------------------------------- standard jobs
def test_run_sync_with_a_prompt_returns_worker_vllm_output(endpoint):
    output = endpoint.run_sync(
        {"prompt": "Hello world", "sampling_params": {"max_tokens": 7, **GREEDY}}, timeout=120
    )
    (item,) = output
    (choice,) = item["choices"]
    assert len(choice["tokens"]) == 1 and isinstance(choice["tokens"][0], str)
    assert item["usage"]["output"] == 7
    assert item["usage"]["input"] > 0


def test_run_sync_with_messages_applies_the_chat_template(endpoint, tiny_model):
    from transformers import AutoTokenizer

    messages = [{"role": "user", "content": "Hello world"}]
    expected = len(
        AutoTokenizer.from_pretrained(tiny_model).apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
    )
    (item,) = endpoint.run_sync(
        {"messages": messages, "sampling_params": {"max_tokens": 4, **GREEDY}}, timeout=120
    )
    assert item["usage"] == {"input": expected, "output": 4}
    (same,) = endpoint.run_sync(
        {
            "prompt": "Hello world",
            "apply_chat_template": True,
            "sampling_params": {"max_tokens": 4, **GREEDY},
        },
        timeout=120,
    )
    assert same == item


def test_run_then_status_then_output(endpoint, app):
    job = endpoint.run({"prompt": "Ray", "sampling_params": {"max_tokens": 5, **GREEDY}})
    output = job.output(timeout=120)
    assert job.status() == "COMPLETED"
    assert output[0]["usage"]["output"] == 5
    status = api(app, "GET", f"status/{job.job_id}").json()
    assert status["id"] == job.job_id and status["output"] == output
    assert isinstance(status["delayTime"], int) and isinstance(status["executionTime"], int)


def test_stream_yields_each_batch_once_growing_as_configured(endpoint):
    sampling = {"max_tokens": 100, **GREEDY}
    job = endpoint.run({"prompt": "Hello", "stream": True, "sampling_params": sampling})
    streamed = list(job.stream())
    assert tokens_per_item(streamed) == [1, 3, 9, 27, 50, 10]
    assert streamed[-1]["usage"]["output"] == 100
    (whole,) = endpoint.run_sync({"prompt": "Hello", "sampling_params": sampling}, timeout=120)
    assert text_of(streamed) == whole["choices"][0]["tokens"][0]

    job = endpoint.run(
        {
            "prompt": "Hello",
            "stream": True,
            "min_batch_size": 2,
            "batch_size_growth_factor": 2,
            "max_batch_size": 8,
            "sampling_params": {"max_tokens": 30, **GREEDY},
        }
    )
    assert tokens_per_item(list(job.stream())) == [2, 4, 8, 8, 8]


def test_n_choices_stream_side_by_side(endpoint):
    job = endpoint.run(
        {
            "prompt": "Hello",
            "stream": True,
            "sampling_params": {"max_tokens": 6, "n": 2, "temperature": 1.0, "seed": 3},
        }
    )
    items = list(job.stream())
    assert all(len(item["choices"]) == 2 for item in items)
    assert sum(tokens_per_item(items)) == 12


# ---------------------------------------------------------------- OpenAI-wrapped jobs
def test_openai_wrapped_jobs(endpoint):
    chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, **GREEDY}
    (response,) = endpoint.run_sync(
        {"openai_route": "/v1/chat/completions", "openai_input": chat}, timeout=120
    )
    validate("CreateChatCompletionResponse", response)
    assert response["usage"]["completion_tokens"] == 4

    raw = endpoint.run_sync(
        {"openai_route": "/v1/chat/completions", "openai_input": {**chat, "stream": True}},
        timeout=120,
    )
    assert all(isinstance(batch, str) for batch in raw)  # RAW_OPENAI_OUTPUT=1: SSE text
    events = "".join(raw).split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    for event in events[:-2]:
        validate("CreateChatCompletionStreamResponse", json.loads(event.removeprefix("data: ")))
    # role + 4 tokens + [DONE] = 6 events, in worker-vllm's growing batches: 1, 3, then 2
    assert [batch.count("data: ") for batch in raw] == [1, 3, 2]

    (models,) = endpoint.run_sync({"openai_route": "/v1/models"}, timeout=60)
    assert [m["id"] for m in models["data"]] == ["tiny"]


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("job_input", "message"),
    [
        ({"prompt": 42}, "input.prompt: Input should be a valid string"),
        ({"prompt": "x", "sampling_params": {"temprature": 0.5}}, "unknown sampling parameter"),
        ({"prompt": "x", "messages": [{"role": "user", "content": "y"}]}, "not both"),
        ({"apply_chat_template": True}, "give prompt or messages"),
        ({"prompt": "x", "sampling_params": {"top_p": 2}}, "top_p"),
        ({"prompt": "x", "model": "gpt-4"}, "The model `gpt-4` does not exist"),
    ],
)
def test_bad_job_inputs_end_failed_with_a_clear_error(app, job_input, message):
    result = api(app, "POST", "runsync", json={"input": job_input}).json()
    assert result["status"] == "FAILED"
    assert message in result["error"]


def test_bad_openai_wrapped_input_fails_with_openai_error(app):
    result = api(
        app,
        "POST",
        "runsync",
        json={
            "input": {
                "openai_route": "/v1/chat/completions",
                "openai_input": {"model": "gpt-4", "messages": []},
            }
        },
    ).json()
    assert result["status"] == "FAILED"
    validate("ErrorResponse", result["output"])


@pytest.mark.parametrize(
    "body", [b"{not json", b'{"prompt": "x"}', b'{"input": {}, "policy": {"ttl": -5}}']
)
def test_malformed_requests_are_400_in_runpod_shape(app, body):
    response = api(app, "POST", "run", data=body)
    assert response.status_code == 400
    assert set(response.json()) == {"error"}


def test_unknown_job_and_unknown_endpoint_are_404(app):
    assert api(app, "GET", "status/no-such-job").status_code == 404
    response = requests.post(
        f"{app.base_url}/v2/other-endpoint/run",
        json={"input": {"prompt": "x"}},
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=30,
    )
    assert response.status_code == 404 and "other-endpoint" in response.json()["error"]


def replicas_stderr() -> str:
    """What Ray's workers (the app's replicas) wrote to stderr, where Serve writes its access
    log too (RAY_SERVE_LOG_TO_STDERR)."""
    import ray

    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    return "".join(path.read_text(errors="replace") for path in logs.glob("worker-*.err"))


def test_job_polls_stay_out_of_the_access_log_unless_they_fail(endpoint, app):
    failed_poll = "GET /v2/{endpoint_id}/status/{job_id} 404"
    failed_before = replicas_stderr().count(failed_poll)
    job = endpoint.run({"prompt": "quiet", "sampling_params": {"max_tokens": 3}})
    assert job.output(timeout=120)  # the SDK polls /status until the job is done
    assert api(app, "GET", f"stream/{job.job_id}").status_code == 200
    assert api(app, "GET", "status/no-such-job").status_code == 404
    # The failed poll came last and is logged: every line before it is in the files.
    wait_for(lambda: replicas_stderr().count(failed_poll) > failed_before, timeout=30)
    logged = replicas_stderr()
    assert "POST /v2/{endpoint_id}/run 200" in logged
    assert "/status/{job_id} 200" not in logged and "/stream/{job_id} 200" not in logged
    assert "CALL status" not in logged and "CALL submit" not in logged  # the job queue's


# ---------------------------------------------------------------- lifecycle
def test_cancel_mid_generation_stops_the_engine(endpoint, app):
    job = endpoint.run({"prompt": "Hello", "stream": True, "sampling_params": LONG})
    wait_for(lambda: job.status() == "IN_PROGRESS")
    wait_for(lambda: app.engine_requests() == 1)
    assert job.cancel()["status"] == "CANCELLED"
    wait_for(lambda: app.engine_requests() == 0, timeout=10)
    assert api(app, "GET", f"status/{job.job_id}").json()["status"] == "CANCELLED"


def test_execution_timeout_ends_the_job_timed_out(app):
    submitted = api(
        app,
        "POST",
        "run",
        json={
            "input": {"prompt": "Hello", "sampling_params": LONG},
            "policy": {"executionTimeout": 1500},
        },
    ).json()
    status = wait_for(
        lambda: (
            (s := api(app, "GET", f"status/{submitted['id']}").json())["status"]
            in ("COMPLETED", "FAILED", "TIMED_OUT", "CANCELLED")
            and s
        ),
        timeout=30,
    )
    assert status["status"] == "TIMED_OUT"
    assert "executionTimeout" in status["error"]
    wait_for(lambda: app.engine_requests() == 0, timeout=10)


def test_max_concurrency_queues_jobs_and_purge_drops_only_queued_ones(endpoint, app):
    jobs = [endpoint.run({"prompt": f"Hello {i}", "sampling_params": LONG}) for i in range(4)]

    def states():
        return sorted(job.status() for job in jobs)

    wait_for(lambda: states() == ["IN_PROGRESS"] * 2 + ["IN_QUEUE"] * 2)
    health = endpoint.health()
    assert health["jobs"]["inProgress"] == 2 and health["jobs"]["inQueue"] == 2
    assert health["workers"]["ready"] == 1 and health["workers"]["running"] == 1

    assert endpoint.purge_queue() == {"removed": 2, "status": "completed"}
    assert states() == ["CANCELLED", "CANCELLED", "IN_PROGRESS", "IN_PROGRESS"]
    # (the replica is saturated: a stats call would queue behind the running jobs)
    for job in jobs:
        job.cancel()
    wait_for(lambda: app.engine_requests() == 0, timeout=10)


# ---------------------------------------------------------------- auth
def test_api_key_is_required_on_every_route_but_health(app):
    for key in (None, "wrong-key"):
        response = api(app, "POST", "run", key=key, json={"input": {"prompt": "x"}})
        assert response.status_code == 401 and "API key" in response.json()["error"]
        response = requests.get(
            f"{app.base_url}/v1/models",
            headers={"Authorization": f"Bearer {key}"} if key else {},
            timeout=30,
        )
        assert response.status_code == 401
        validate("ErrorResponse", response.json())
    assert requests.get(app.base_url + "/health", timeout=30).status_code == 200

    runpod.endpoint_url_base = app.base_url + "/v2"
    with pytest.raises(RuntimeError, match="401 Unauthorized"):
        runpod.Endpoint(ENDPOINT, api_key="wrong-key").health()

    client = app.openai(f"/v2/{ENDPOINT}/openai/v1", api_key=API_KEY)
    assert [m.id for m in client.models.list()] == ["tiny"]


# ---------------------------------------------------------------- bounds and hardening
def test_a_flood_past_max_queued_jobs_gets_429_and_loses_nothing_accepted(app):
    accepted, refused = [], []
    for i in range(12):
        body = {"input": {"prompt": f"flood {i}", "sampling_params": LONG}}
        response = api(app, "POST", "run", json=body)
        (refused if response.status_code == 429 else accepted).append(response)
    assert 6 <= len(accepted) <= 8 and len(refused) >= 4  # 2 run, 6 wait, the rest refused
    for response in refused:
        assert int(response.headers["Retry-After"]) > 0
        assert "MAX_QUEUED_JOBS" in response.json()["error"]
    ids = [response.json()["id"] for response in accepted]
    for job_id in ids:
        api(app, "POST", f"cancel/{job_id}")
    assert {api(app, "GET", f"status/{i}").json()["status"] for i in ids} == {"CANCELLED"}
    wait_for(lambda: app.engine_requests() == 0, timeout=10)


def test_unencodable_text_and_deep_nesting_are_400_and_user_text_is_escaped_in_logs(app):
    surrogate = api(app, "POST", "run", data=b'{"input": {"prompt": "\\ud800"}}')
    assert surrogate.status_code == 400 and "not valid Unicode" in surrogate.json()["error"]
    deep = b'{"input": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    assert api(app, "POST", "run", data=deep).status_code == 400

    forged = "x\nFORGED-LOG-LINE"
    body = {"input": {"model": forged, "prompt": "hi"}}
    failed = api(app, "POST", "runsync", json=body).json()
    assert failed["status"] == "FAILED" and forged in failed["error"]
    wait_for(lambda: "x\\nFORGED-LOG-LINE" in replicas_stderr(), timeout=30)
    assert "\nFORGED-LOG-LINE" not in replicas_stderr()


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/responses"])
def test_openai_routes_answer_4xx_to_unencodable_text_and_deep_nesting(app, path):
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    text = {
        "/v1/chat/completions": b'"messages": [{"role": "user", "content": "\\ud800"}]',
        "/v1/completions": b'"prompt": "\\ud800"',
        "/v1/responses": b'"input": "\\ud800"',
    }[path]
    deep = b"[" * 5000 + b"]" * 5000
    for body in (
        b'{"model": "tiny", "max_tokens": 4, ' + text + b"}",
        b'{"model": "tiny", "max_tokens": 4, "stop": ' + deep + b"}",
    ):
        response = requests.post(app.base_url + path, data=body, headers=headers, timeout=60)
        assert 400 <= response.status_code < 500, (body[:60], response.text[:300])


def test_absurd_n_is_refused_at_once_over_http_and_in_a_job(app):
    body = {"model": "tiny", "prompt": "hi", "n": 5000, "max_tokens": 5}
    response = requests.post(
        f"{app.base_url}/v1/completions",
        json=body,
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=60,
    )
    assert response.status_code == 400 and "MAX_N" in response.json()["error"]["message"]
    job = {"openai_route": "/v1/completions", "openai_input": body}
    failed = api(app, "POST", "runsync", json={"input": job}).json()
    assert failed["status"] == "FAILED" and "MAX_N" in failed["error"]


# ---------------------------------------------------------------- durability
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}
MID = {"max_tokens": 400, **GREEDY}  # a few seconds each


def wait_all_final(app, ids: list[str], timeout: float) -> dict[str, dict]:
    """Poll every job until all are final: 503 is allowed while the job queue restarts,
    404 (a lost job) never."""
    seen: dict[str, dict] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for job_id in ids:
            response = api(app, "GET", f"status/{job_id}")
            assert response.status_code in (200, 503), (job_id, response.text)
            if response.status_code == 200:
                seen[job_id] = response.json()
        if len(seen) == len(ids) and all(s["status"] in FINAL for s in seen.values()):
            return seen
        time.sleep(0.5)
    raise AssertionError(f"jobs not final after {timeout} s: {seen}")


def test_killing_the_job_queue_loses_no_job(app):
    run = lambda body: api(app, "POST", "run", json={"input": body}).json()["id"]  # noqa: E731
    streamed = run({"prompt": "streamed", "stream": True, "sampling_params": MID})
    plain = [run({"prompt": f"plain {i}", "sampling_params": MID}) for i in range(3)]
    wait_for(lambda: api(app, "GET", f"status/{streamed}").json()["status"] == "IN_PROGRESS")
    time.sleep(1)  # the streamed job has output by now; one plain job runs, two wait
    queue = psutil.Process(app.handle("JobQueue").stats.remote().result()["pid"])
    queue.kill()
    killed_at = time.monotonic()

    final = wait_all_final(app, [streamed, *plain], timeout=240)
    print(f"\nall jobs final {time.monotonic() - killed_at:.0f} s after the kill")
    assert all(final[job_id]["status"] == "COMPLETED" for job_id in plain), final
    assert all(final[job_id]["output"][0]["usage"]["output"] == 400 for job_id in plain)
    # its output went with the killed process: it ends, saying why
    assert final[streamed]["status"] in ("COMPLETED", "FAILED")
    if final[streamed]["status"] == "FAILED":
        assert "job queue" in final[streamed]["error"]
    new_pid = app.handle("JobQueue").stats.remote().result()["pid"]
    assert new_pid != queue.pid
    wait_for(lambda: app.engine_requests() == 0, timeout=60)


def test_a_redeploy_with_a_changed_setting_keeps_every_job(app, serve_cluster):
    done = api(
        app,
        "POST",
        "runsync",
        json={"input": {"prompt": "before", "sampling_params": {"max_tokens": 3, **GREEDY}}},
    ).json()
    assert done["status"] == "COMPLETED"
    waiting = api(app, "POST", "run", json={"input": {"prompt": "across", "sampling_params": MID}})
    serve_cluster.deploy(app.env, {"JOB_RETENTION_S": 3600}, name=app.name)
    final = wait_all_final(app, [done["id"], waiting.json()["id"]], timeout=240)
    assert final[done["id"]]["output"] == done["output"]  # still readable, whole
    ended = final[waiting.json()["id"]]
    assert ended["status"] == "COMPLETED" or "job queue" in ended["error"], ended
