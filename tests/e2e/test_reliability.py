"""Reliability end to end: bad input on every route, a fuzz of the app's own OpenAPI schema,
overload, a bounded soak, secrets, engine death mid-stream, and graceful shutdown — the real
app and engine on CPU, driven by real clients.

One app for the module: the tiny model with small capacity (MAX_CONCURRENCY=4,
MAX_QUEUED_REQUESTS=4) so overload is easy to reach, an API key, a request size limit and a
(fake) HF_TOKEN in the environment of every Ray process. The destructive tests run last.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.conftest import wait_for
from tests.contracts import validate
from tests.e2e.conftest import FAKE_HF_TOKEN

pytestmark = pytest.mark.e2e

API_KEY = "reliability-key-7f3a"
HF_TOKEN = FAKE_HF_TOKEN  # in the environment of the cluster's processes (tests/e2e/conftest.py)
AUTH = {"Authorization": f"Bearer {API_KEY}"}
MAX_REQUEST_BYTES = 65536
CONCURRENCY, QUEUED = 4, 4
MESSAGES = [{"role": "user", "content": "Hello there"}]
GREEDY = {"temperature": 0, "ignore_eos": True}
SOAK_S = float(os.environ.get("SOAK_S", "30"))  # SOAK_S=180 for a longer soak
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}


STALL_TIMEOUT_S = 10


@pytest.fixture(scope="module")
def app(serve_cluster, tiny_model: Path, tmp_path_factory):
    env = {
        "MODEL_NAME": str(tiny_model),
        "OPENAI_SERVED_MODEL_NAME_OVERRIDE": "tiny",
        "MAX_CONCURRENCY": str(CONCURRENCY),
        "MAX_QUEUED_REQUESTS": str(QUEUED),
        "MAX_MODEL_LEN": "2048",
        "MAX_REQUEST_BYTES": str(MAX_REQUEST_BYTES),
        "API_KEY": API_KEY,
        "HF_TOKEN": HF_TOKEN,
        "BASE_PATH": str(tmp_path_factory.mktemp("base")),
        "DISABLE_LOG_STATS": "1",
        "DISABLE_LOG_REQUESTS": "0",  # request logs on: they must not carry secrets either
        "ENGINE_STALL_TIMEOUT_S": str(STALL_TIMEOUT_S),
    }
    with serve_cluster.deployed(env) as app:
        yield app


def post(app, path: str, body: Any = None, **kwargs) -> httpx.Response:
    kwargs.setdefault("timeout", 60)
    headers = {**AUTH, **kwargs.pop("headers", {})}
    if body is not None and "content" not in kwargs:
        kwargs["json"] = body
    return httpx.post(app.base_url + path, headers=headers, **kwargs)


def openai_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    validate("ErrorResponse", body)
    return body["error"]


def runpod_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    return body["error"]


def chat(**fields: Any) -> dict:
    return {"model": "tiny", "messages": MESSAGES, "max_tokens": 4, **fields}


# ---------------------------------------------------------------- bad input
BAD_OPENAI = [
    ("/v1/chat/completions", chat(max_tokens=-1), "max_tokens"),
    ("/v1/chat/completions", chat(max_tokens="ten"), "max_tokens"),
    ("/v1/chat/completions", chat(temperature=-0.5), "temperature"),
    ("/v1/chat/completions", chat(top_p=1.5), "top_p"),
    ("/v1/chat/completions", chat(top_p=0), "top_p"),
    ("/v1/chat/completions", chat(n=0), "n"),
    ("/v1/chat/completions", chat(top_logprobs=50, logprobs=True), "logprobs"),
    ("/v1/chat/completions", chat(messages=[]), "message"),
    ("/v1/chat/completions", chat(messages="hello"), "messages"),
    ("/v1/chat/completions", chat(messages=[{"role": "wizard", "content": "hi"}]), "wizard"),
    ("/v1/chat/completions", {"model": "tiny"}, "messages"),
    ("/v1/chat/completions", chat(model=123), "model"),
    ("/v1/chat/completions", chat(max_tokens=4000), "max"),  # beyond the context (2048)
    ("/v1/completions", {"model": "tiny", "max_tokens": 4}, "prompt"),
    ("/v1/completions", {"model": "tiny", "prompt": "hi " * 3000, "max_tokens": 4}, "context"),
    ("/v1/completions", {"model": "tiny", "prompt": "hi", "stop": 5}, "stop"),
]


@pytest.mark.parametrize(("path", "body", "named"), BAD_OPENAI)
def test_bad_openai_requests_are_400_naming_the_problem(app, path, body, named):
    error = openai_error(post(app, path, body), 400)
    assert named in error["message"] or named == error["param"], error


def test_malformed_bodies_unknown_routes_and_methods_answer_in_each_protocols_shape(app):
    for path in ("/v1/chat/completions", "/v2/any/openai/v1/completions"):
        json_type = {"content-type": "application/json"}
        malformed = b'{"model": "tiny", "messages": ['
        error = openai_error(post(app, path, content=malformed, headers=json_type), 400)
        assert "not valid JSON" in error["message"]
        openai_error(post(app, path, content=b'["a list"]', headers=json_type), 400)
        # as `vllm serve`: a body that is not said to be JSON is refused
        error = openai_error(post(app, path, content=b'{"model": "tiny"}'), 400)
        assert "application/json" in error["message"]
    assert "not valid JSON" in runpod_error(post(app, "/v2/any/run", content=b"{nope"), 400)
    assert "input" in runpod_error(post(app, "/v2/any/run", [1, 2]), 400)
    assert "input" in runpod_error(post(app, "/v2/any/runsync", {"prompt": "x"}), 400)
    limit = runpod_error(
        post(app, "/v2/any/run", {"input": {"prompt": "x"}, "policy": {"ttl": -5}}), 400
    )
    assert "ttl" in limit
    assert "wait" in runpod_error(post(app, "/v2/any/runsync?wait=soon", {"input": {}}), 400)
    runpod_error(httpx.get(app.base_url + "/v2/any/status/no-such-job", headers=AUTH), 404)
    runpod_error(httpx.delete(app.base_url + "/v2/any/run", headers=AUTH), 405)
    openai_error(httpx.get(app.base_url + "/v1/chat/completions", headers=AUTH), 405)
    openai_error(httpx.get(app.base_url + "/v1/nothing-here", headers=AUTH), 404)
    openai_error(httpx.get(app.base_url + "/nothing/at/all", headers=AUTH), 404)


def test_bodies_over_the_size_limit_are_413_before_they_are_read(app):
    big = {"model": "tiny", "prompt": "x" * MAX_REQUEST_BYTES, "max_tokens": 1}
    error = openai_error(post(app, "/v1/completions", big), 413)
    assert "MAX_REQUEST_BYTES" in error["message"]
    assert "MAX_REQUEST_BYTES" in runpod_error(
        post(app, "/v2/any/run", {"input": {"prompt": "x" * MAX_REQUEST_BYTES}}), 413
    )

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(MAX_REQUEST_BYTES // 1024 + 2):
            yield b" " * 1024

    openai_error(post(app, "/v1/completions", content=chunks()), 413)
    assert post(
        app, "/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 1}
    ).is_success


# ---------------------------------------------------------------- fuzz
FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))


def test_fuzzing_the_apps_own_openapi_schema_finds_no_server_error(app):
    """Valid and invalid requests generated from /openapi.json (vLLM's request models for every
    route of vLLM's, worker-vllm's job input for RunPod's): none may get a 5xx."""
    import schemathesis
    from hypothesis import HealthCheck, given, seed, settings
    from hypothesis import strategies as st

    schema = schemathesis.openapi.from_url(app.base_url + "/openapi.json", headers=AUTH)
    cases = st.one_of(
        schema.as_strategy(schemathesis.GenerationMode.POSITIVE, headers=AUTH),
        schema.as_strategy(schemathesis.GenerationMode.NEGATIVE, headers=AUTH),
    )
    seen: Counter = Counter()
    server_errors: list[str] = []

    @seed(int(os.environ.get("FUZZ_SEED", "20261126")))
    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases)
    def fuzz(case) -> None:
        response = case.call(base_url=app.base_url, timeout=120)
        seen[f"{case.operation.label} {response.status_code}"] += 1
        # 501: vLLM's answer (as `vllm serve`'s) on a route whose API the model does not have
        unsupported = response.status_code == 501 and "does not support" in response.text
        if response.status_code >= 500 and not unsupported:
            server_errors.append(
                f"{case.operation.label} {response.status_code}: {response.text[:300]} "
                f"for {case.body!r:.300}"
            )

    fuzz()
    print(f"\nfuzz: {sum(seen.values())} requests: {dict(sorted(seen.items()))}")
    assert not server_errors, "\n".join(server_errors)
    # some were valid, on several routes (vLLM's API has about 40, each fuzzed a few times)
    assert len({key for key in seen if key.endswith(" 200")}) >= 3, seen


# ---------------------------------------------------------------- overload
async def _stream_chat(client: httpx.AsyncClient, max_tokens: int) -> tuple[int, Any]:
    body = chat(max_tokens=max_tokens, stream=True, **GREEDY)
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            return response.status_code, response
        lines = [line async for line in response.aiter_lines() if line.startswith("data: ")]
        # how the stream ended: "length" when it ran to max_tokens and then [DONE]
        # (counting chunks would not do: vLLM merges tokens a slow reader has not taken yet)
        ends = [
            choice["finish_reason"]
            for line in lines[:-1]
            for choice in json.loads(line.removeprefix("data: ")).get("choices", [])
            if choice.get("finish_reason")
        ]
        return 200, (ends[-1] if ends and lines[-1] == "data: [DONE]" else None)


def test_beyond_capacity_requests_get_503_with_retry_after_and_jobs_all_finish(app):
    async def burst():
        async with httpx.AsyncClient(base_url=app.base_url, headers=AUTH, timeout=120) as c:
            return await asyncio.gather(*(_stream_chat(c, 1500) for _ in range(12)))

    results = asyncio.run(burst())
    refused = [r for status, r in results if status != 200]
    served = [n for status, n in results if status == 200]
    assert len(served) == CONCURRENCY + QUEUED and len(refused) == 12 - CONCURRENCY - QUEUED
    assert served == ["length"] * len(served)  # every accepted stream ran to the end
    for response in refused:
        assert response.status_code == 503 and response.headers["retry-after"].isdigit()
        assert "MAX_QUEUED_REQUESTS" in openai_error(response, 503)["message"]

    jobs = [
        post(app, "/v2/any/run", {"input": {"prompt": f"job {i}", "sampling_params": GREEDY}})
        for i in range(12)
    ]
    ids = [job.json()["id"] for job in jobs]
    assert all(job.json()["status"] == "IN_QUEUE" for job in jobs)
    statuses = wait_final(app, ids, timeout=120)
    assert set(statuses.values()) == {"COMPLETED"}, statuses


def wait_final(app, ids: list[str], timeout: float, endpoint: str = "any") -> dict[str, str]:
    """The jobs' final statuses, read under the endpoint id they were submitted under."""
    deadline = time.monotonic() + timeout
    statuses: dict[str, str] = {}
    while time.monotonic() < deadline:
        for job_id in ids:
            if statuses.get(job_id) not in FINAL:
                response = httpx.get(f"{app.base_url}/v2/{endpoint}/status/{job_id}", headers=AUTH)
                statuses[job_id] = response.json()["status"]
        if all(s in FINAL for s in statuses.values()):
            return statuses
        time.sleep(0.5)
    raise AssertionError(f"jobs not final after {timeout} s: {statuses}")


# ---------------------------------------------------------------- soak
def serving_processes(app) -> list[psutil.Process]:
    """The LLM replica, its engine processes, and the job queue's replica."""
    llm = psutil.Process(app.handle().stats.remote().result()["pid"])
    queue = psutil.Process(app.handle("JobQueue").stats.remote().result()["pid"])
    return [llm, *llm.children(recursive=True), queue]


def rss_mb(processes: list[psutil.Process]) -> float:
    return sum(p.memory_info().rss for p in processes if p.is_running()) / 2**20


async def _soak_client(app, until: float, seed: int, outcome: Counter, jobs: list[str]) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=app.base_url, headers=AUTH, timeout=120) as client:
        while time.monotonic() < until:
            kind = rng.choice(["stream", "plain", "runsync", "run", "cancel", "disconnect"])
            tokens = rng.randint(8, 300)
            try:
                if kind == "stream":
                    status, _ = await _stream_chat(client, tokens)
                elif kind == "plain":
                    body = {"model": "tiny", "prompt": "soak", "max_tokens": tokens, **GREEDY}
                    status = (await client.post("/v1/completions", json=body)).status_code
                elif kind == "disconnect":
                    body = chat(max_tokens=2000, stream=True, **GREEDY)
                    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                        status = r.status_code
                        if status == 200:
                            async for _ in r.aiter_lines():
                                break  # the client goes away after the first line
                else:
                    sampling = {"max_tokens": tokens, **GREEDY}
                    route = "/v2/soak/runsync?wait=100" if kind == "runsync" else "/v2/soak/run"
                    response = await client.post(
                        route, json={"input": {"prompt": "soak", "sampling_params": sampling}}
                    )
                    status = response.status_code
                    if status == 200:  # a client follows its job to the end, as SDKs do
                        job_id = response.json()["id"]
                        jobs.append(job_id)
                        if kind == "cancel":
                            await asyncio.sleep(rng.random() / 2)
                            cancel = await client.post(f"/v2/soak/cancel/{job_id}")
                            outcome[f"cancelled {cancel.status_code}"] += 1
                        while (await client.get(f"/v2/soak/status/{job_id}")).json()[
                            "status"
                        ] not in FINAL:
                            await asyncio.sleep(0.2)
                outcome[f"{kind} {status}"] += 1
            except httpx.HTTPError as exc:
                outcome[f"{kind} {type(exc).__name__}"] += 1


def test_the_replica_keeps_its_start_up_heap_out_of_garbage_collection(app):
    """As `vllm serve` does (gc.freeze once the engine is up; Serve does it for a replica once
    it is initialized, RAY_SERVE_FREEZE_GC_ON_STARTUP): otherwise every full collection while
    serving scans the ~700k objects of vLLM, torch and Ray, a pause of 0.4 s or more on 2 cores
    in every stream of the replica."""
    stats = app.handle().stats.remote().result()
    assert stats["gc_frozen_objects"] > 100_000, stats


def test_the_replica_and_engine_run_at_vllms_priority_the_engine_core_on_its_workers_cpu(app):
    """Ray starts its workers at 0 here, as wherever this project starts Ray
    (RAY_worker_niceness=0): the LLM replica, which does what `vllm serve`'s API server does,
    is at LLM_REPLICA_NICENESS's 0 without any privilege, and its engine's processes, the engine
    core and vLLM's worker, keep that value (LLM_ENGINE_NICENESS is unset). The worker keeps the
    CPU vLLM binds its main thread to, and every thread of the engine core runs there too
    (ENGINE_CORE_ON_WORKER_CPUS, on with vLLM's CPU backend); nothing keeps the replica off
    that CPU."""
    assert os.environ["RAY_worker_niceness"] == "0"  # noqa: SIM112 (Ray's spelling)
    replica = psutil.Process(app.handle().stats.remote().result()["pid"])
    engine = {
        p.cmdline()[0].split()[0]: p
        for p in replica.children(recursive=True)
        if p.cmdline()[0].startswith("VLLM::")
    }
    assert set(engine) == {"VLLM::EngineCore", "VLLM::Worker"}
    core, worker = engine["VLLM::EngineCore"], engine["VLLM::Worker"]

    def nice(process: psutil.Process) -> set[int]:
        return {os.getpriority(os.PRIO_PROCESS, t.id) for t in process.threads()}

    def cpus(process: psutil.Process) -> set[frozenset[int]]:
        return {frozenset(os.sched_getaffinity(t.id)) for t in process.threads()}

    assert (nice(replica), nice(core), nice(worker)) == ({0}, {0}, {0})
    bound = frozenset(os.sched_getaffinity(worker.pid))
    allowed = frozenset(os.sched_getaffinity(0))
    assert bound < allowed, (bound, allowed)  # vLLM's automatic binding reserves a core
    assert (cpus(replica), cpus(core)) == ({allowed}, {bound})


def test_soak_mixed_traffic_above_capacity_leaves_nothing_behind(app):
    processes = serving_processes(app)
    outcome: Counter = Counter()
    jobs: list[str] = []

    async def soak(seconds: float, clients: int, seed: int) -> None:
        until = time.monotonic() + seconds
        await asyncio.gather(
            *(_soak_client(app, until, seed + i, outcome, jobs) for i in range(clients))
        )

    asyncio.run(soak(SOAK_S / 3, 16, 0))  # warm-up: caches and pools reach their size
    warm = rss_mb(processes)
    asyncio.run(soak(SOAK_S * 2 / 3, 16, 100))
    after = rss_mb(processes)
    queue_mb = rss_mb(processes[-1:])  # the job queue's replica (serving_processes)

    statuses = wait_final(app, jobs, timeout=120, endpoint="soak")
    deadline = time.monotonic() + 30
    while app.engine_requests() and time.monotonic() < deadline:
        time.sleep(0.5)
    stats = app.handle().stats.remote().result()
    print(
        f"\nsoak: {sum(outcome.values())} requests in {SOAK_S:.0f} s: "
        f"{dict(sorted(outcome.items()))}\n      jobs: {dict(Counter(statuses.values()))}; "
        "engine requests left: "
        f"{stats['unfinished_requests']}; memory {warm:.0f} MB after warm-up, {after:.0f} MB"
        f" at the end (the job queue {queue_mb:.0f} MB)"
    )
    bad = {k: v for k, v in outcome.items() if k.split()[-1].startswith("5")}
    assert set(bad) <= {f"{kind} 503" for kind in ("stream", "plain", "disconnect")}, bad
    assert not [k for k in outcome if "Error" in k], outcome  # no transport failures
    assert outcome["stream 200"] and outcome["runsync 200"] and outcome["cancelled 200"]
    assert set(statuses.values()) <= {"COMPLETED", "CANCELLED"}, Counter(statuses.values())
    assert stats["unfinished_requests"] == 0 and stats["running"] == stats["waiting"] == 0
    assert after < warm * 1.25 + 100, (warm, after)


# ---------------------------------------------------------------- secrets
def test_secrets_appear_in_no_log_response_or_health(app):
    import ray

    health = (
        httpx.get(app.base_url + "/health").text
        + httpx.get(app.base_url + "/v2/any/health", headers=AUTH).text
    )
    assert API_KEY not in health and HF_TOKEN not in health
    logs = Path(ray._private.worker.global_worker.node.get_session_dir_path()) / "logs"
    leaked = [
        path.name
        for path in logs.rglob("*")
        if path.is_file()
        and (API_KEY.encode() in (data := path.read_bytes()) or HF_TOKEN.encode() in data)
    ]
    assert not leaked, f"secrets found in {leaked}"
    # the check covers request logs (DISABLE_LOG_REQUESTS=0 here): they were written, to the
    # replica's Serve log or to its worker's stdout file, depending on which of Serve and vLLM
    # set up its logging first
    request_logs = [
        p.name for p in logs.rglob("*") if p.is_file() and b"Received request" in p.read_bytes()
    ]
    assert request_logs, f"no request log among {sorted(p.name for p in logs.rglob('*'))}"


# ---------------------------------------------------------------- faults (destructive, last)
def gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_hung_engine_is_stopped_its_streams_and_jobs_end_and_the_replica_is_replaced(app):
    """The engine core stops (SIGSTOP: alive, holding its requests, making no step). The
    stall watch kills it after ENGINE_STALL_TIMEOUT_S; from there on it is vLLM's own dead
    engine, as after the OOM killer: streams end with an error event, a running job fails,
    /health answers 503, and Serve replaces the replica."""
    pid = app.handle().stats.remote().result()["pid"]
    (engine,) = [p for p in psutil.Process(pid).children() if "EngineCore" in " ".join(p.cmdline())]
    job = post(
        app,
        "/v2/any/run",
        {"input": {"prompt": "x", "sampling_params": {**GREEDY, "max_tokens": 1800}}},
    )
    job_id = job.json()["id"]

    async def streams() -> tuple[list[list[str]], float]:
        streaming = asyncio.Semaphore(0)
        stopped: list[float] = []
        async with httpx.AsyncClient(base_url=app.base_url, headers=AUTH, timeout=120) as c:

            async def one() -> list[str]:
                body = chat(max_tokens=1800, stream=True, **GREEDY)
                events: list[str] = []
                async with c.stream("POST", "/v1/chat/completions", json=body) as response:
                    async for line in response.aiter_lines():
                        if line.startswith("data: "):
                            events.append(line.removeprefix("data: "))
                            if len(events) == 5:
                                streaming.release()
                return events

            async def stop_when_both_stream() -> None:
                for _ in range(2):
                    await streaming.acquire()
                engine.suspend()
                stopped.append(time.monotonic())

            *results, _ = await asyncio.gather(one(), one(), stop_when_both_stream())
            return results, stopped[0]

    try:
        results, stopped_at = asyncio.run(streams())
        ended_after = time.monotonic() - stopped_at
        health = wait_for(
            lambda: (r := httpx.get(app.base_url + "/health")).status_code == 503 and r
        )
    finally:
        with contextlib.suppress(psutil.Error):
            engine.resume()
    print(f"\nstreams of the hung engine ended {ended_after:.0f} s after it stopped")
    assert ended_after < STALL_TIMEOUT_S + 20
    for events in results:
        assert events[-1] == "[DONE]" and len(events) < 1800  # it ended early, with the error
        validate("ErrorResponse", json.loads(events[-2]))
    assert "engine" in health.json()["error"]
    wait_for(lambda: gone(engine), timeout=30)  # the replica stopped it
    (status,) = wait_final(app, [job_id], timeout=60).values()
    body = httpx.get(f"{app.base_url}/v2/any/status/{job_id}", headers=AUTH).json()
    assert status == "FAILED" and body["error"], body

    started = time.monotonic()
    statuses = Counter()
    while time.monotonic() < started + 300:
        try:  # Serve's proxy may hold a request until the replacement runs
            response = post(app, "/v1/chat/completions", chat(max_tokens=2))
        except httpx.TimeoutException:
            statuses["held past the client's timeout"] += 1
            continue
        statuses[response.status_code] += 1
        if response.status_code == 200:
            break
        openai_error(response, response.status_code)
        time.sleep(1)
    else:
        pytest.fail(f"no recovery within 300 s: {statuses}")
    assert set(statuses) <= {200, 503, "held past the client's timeout"}, statuses
    assert app.handle().stats.remote().result()["pid"] != pid
    print(f"replica replaced, serving again {time.monotonic() - started:.0f} s after")


def test_deleting_the_app_lets_in_flight_streams_finish(app):
    from ray import serve

    async def run() -> list[tuple[int, Any]]:
        async with httpx.AsyncClient(base_url=app.base_url, headers=AUTH, timeout=120) as c:
            streams = [asyncio.create_task(_stream_chat(c, 1500)) for _ in range(2)]
            await asyncio.sleep(1.0)  # both are generating
            await asyncio.to_thread(serve.delete, app.name, _blocking=False)
            return await asyncio.gather(*streams)

    results = asyncio.run(run())
    assert [status for status, _ in results] == [200, 200], [
        r.text if status != 200 else r for status, r in results
    ]
    assert [end for _, end in results] == ["length", "length"], results  # each ran to its end
