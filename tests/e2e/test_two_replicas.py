"""A deployment of two replicas, the real app, the real engine on CPU.

Routing (ROUTING_POLICY=prefix, the default): a conversation's turns land on the replica that
holds its prefix, read from the replicas' own prefix-cache counters; one hot prefix from many
clients keeps both replicas busy; `prompt_cache_key` and `x-session-id` pin; RunPod jobs route
the same way.

Runtime LoRA loading (VLLM_ALLOW_RUNTIME_LORA_UPDATING): an adapter loaded once, through
whichever replica the request reached, is listed and answered by both; unloaded once, it is
gone from all (Ray's own key-value store). A replica killed mid-run loses no job, and its
replacement gets traffic and loads the adapters loaded before it started."""

from __future__ import annotations

import concurrent.futures
import os
import re
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
        "ENABLE_LORA": "1",
        "MAX_LORA_RANK": "8",
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1",
        "MIN_REPLICAS": "2",
        "MAX_REPLICAS": "2",
    }
    with serve_cluster.deployed(env) as app:
        yield app


def replica_stats(app, timeout: float = 60) -> dict[int, dict]:
    """pid -> stats of each replica, until two distinct replicas answered."""
    seen: dict[int, dict] = {}

    def both() -> bool:
        try:
            stats = app.handle().stats.remote().result(timeout_s=30)
        except Exception:  # a replica that was just killed, until Serve notices
            return False
        seen[stats["pid"]] = stats
        return len(seen) >= 2

    wait_for(both, timeout=timeout, interval=0.05)
    return seen


def new_replicas(app, before: dict) -> set[int]:
    """The replicas not in `before`, once two answer again; empty while a killed replica's
    replacement starts (for wait_for: a start takes longer on a busy machine)."""
    try:
        return set(replica_stats(app, timeout=10)) - set(before)
    except AssertionError:
        return set()


def replicas(app) -> dict[int, list[str]]:
    """pid -> runtime adapters of each replica."""
    return {pid: stats["lora_adapters"] for pid, stats in replica_stats(app).items()}


# ---------------------------------------------------------------------------------- routing
# Long, distinct starts: several KV cache blocks each, so a replica that holds one hits it.
SYSTEMS = [
    f"Conversation {i}. "
    + " ".join(
        f"{word}{i * 7 + n}"
        for n, word in enumerate(["Paris", "Ray", "vLLM", "fox", "world", "digits"] * 40)
    )
    for i in range(4)
]


def prefix_cache(app) -> dict[int, tuple[int, int]]:
    """pid -> (prompt tokens looked up in its prefix cache, found there) of each replica."""
    return {
        pid: (stats["prefix_cache"]["queries"], stats["prefix_cache"]["hits"])
        for pid, stats in replica_stats(app).items()
    }


def served(app, before: dict[int, tuple[int, int]], prompt_tokens: int) -> dict[int, tuple]:
    """pid -> (queries, hits) since `before`, once the replicas counted `prompt_tokens` in all
    (vLLM counts a request's prompt when its engine step's outputs are processed)."""
    delta: dict[int, tuple[int, int]] = {}

    def counted() -> bool:
        now = prefix_cache(app)
        delta.clear()
        for pid, (queries, hits) in now.items():
            q0, h0 = before.get(pid, (0, 0))
            delta[pid] = (queries - q0, hits - h0)
        return sum(q for q, _ in delta.values()) >= prompt_tokens

    wait_for(counted, timeout=60, interval=0.2)
    return {pid: d for pid, d in delta.items() if d[0] > 0}


def converse(app, system: str, turns: int = 3, **extra) -> list[int]:
    """A conversation of `turns` turns, each resending the earlier ones; prompt tokens of each."""
    client = app.openai()
    messages = [{"role": "system", "content": system}]
    prompt_tokens = []
    for turn in range(turns):
        messages.append({"role": "user", "content": f"Question {turn}: where is the fox?"})
        answer = client.chat.completions.create(
            model="tiny",
            messages=messages,
            max_tokens=8,
            temperature=0,
            extra_body={"ignore_eos": True},
            **extra,
        )
        prompt_tokens.append(answer.usage.prompt_tokens)
        messages.append({"role": "assistant", "content": answer.choices[0].message.content})
    return prompt_tokens


def test_haproxy_asks_the_route_picker(app):
    from ray import serve

    deployments = serve.status().applications[app.name].deployments
    assert "RoutePicker" in deployments, sorted(deployments)


def test_a_conversations_turns_land_on_the_replica_that_holds_its_prefix(app):
    used = set()
    for system in SYSTEMS:
        before = prefix_cache(app)
        tokens = converse(app, system)
        by_replica = served(app, before, sum(tokens))
        assert len(by_replica) == 1, by_replica  # every turn on one replica
        ((pid, (queries, hits)),) = by_replica.items()
        assert queries == sum(tokens)
        # each later turn finds the earlier turns' prompt in that replica's cache
        assert hits >= 0.5 * sum(tokens[:-1]), (hits, tokens)
        used.add(pid)
    assert len(used) == 2  # conversations that share nothing spread over both replicas


def test_one_hot_prefix_from_many_clients_keeps_both_replicas_busy(app):
    before = prefix_cache(app)
    body = {"model": "tiny", "max_tokens": 48, "temperature": 0, "ignore_eos": True}

    def ask(i: int) -> int:
        prompt = SYSTEMS[0] + f" Client {i} asks where the fox is."
        answer = httpx.post(
            app.base_url + "/v1/completions", json={**body, "prompt": prompt}, timeout=120
        )
        assert answer.status_code == 200, answer.text
        return answer.json()["usage"]["prompt_tokens"]

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        tokens = sum(pool.map(ask, range(16)))
    by_replica = served(app, before, tokens)
    assert len(by_replica) == 2, by_replica  # ROUTING_MAX_IMBALANCE bounds the pile-up
    assert sum(hits for _, hits in by_replica.values()) > 0


def test_prompt_cache_key_and_session_header_pin_requests_to_one_replica(app):
    client = app.openai()
    for pin in (
        {"extra_body": {"prompt_cache_key": "tenant-7"}},
        {"extra_headers": {"x-session-id": "session-42"}},
    ):
        before = prefix_cache(app)
        tokens = 0
        for i in range(6):  # prompts that share nothing but the pin
            extra_body = {"ignore_eos": True, **pin.get("extra_body", {})}
            answer = client.completions.create(
                model="tiny",
                prompt=f"{i} " + SYSTEMS[i % 4][::-1],
                max_tokens=4,
                temperature=0,
                extra_body=extra_body,
                extra_headers=pin.get("extra_headers"),
            )
            tokens += answer.usage.prompt_tokens
        assert len(served(app, before, tokens)) == 1, pin


def runsync(app, job_input: dict) -> dict:
    answer = httpx.post(app.base_url + "/v2/local/runsync", json={"input": job_input}, timeout=120)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_runpod_jobs_of_one_conversation_land_on_one_replica(app):
    for system in SYSTEMS:
        before = prefix_cache(app)
        messages = [{"role": "system", "content": system[::-1]}]
        tokens = 0
        for turn in range(3):
            messages.append({"role": "user", "content": f"Job question {turn}"})
            job = {"messages": messages, "sampling_params": {"max_tokens": 4, "ignore_eos": True}}
            result = runsync(app, job)
            assert result["status"] == "COMPLETED", result
            tokens_of_last_turn = result["output"][0]["usage"]["input"]
            tokens += tokens_of_last_turn
            messages.append({"role": "assistant", "content": "Near the lazy dog."})
        by_replica = served(app, before, tokens)
        assert len(by_replica) == 1, by_replica  # every turn on one replica
        ((queries, hits),) = by_replica.values()
        assert hits >= 0.5 * (queries - tokens_of_last_turn), by_replica


def ray_metrics() -> str:
    """The text of Ray's Prometheus endpoint on this (one-node) cluster."""
    import ray

    (node,) = [n for n in ray.nodes() if n["Alive"]]
    url = f"http://127.0.0.1:{node['MetricsExportPort']}/metrics"
    return httpx.get(url, timeout=10).text


def counted(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's series whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_routing_decisions_and_each_replicas_cache_hits_are_on_rays_metrics_endpoint(app):
    decisions = "ray_serve_app_routing_decisions_total"
    found: dict[str, float] = {}

    def exported() -> bool:  # Ray's agent exports what the processes report, periodically
        text = ray_metrics()
        for reason in ("matched", "affinity", "no_match"):
            found[reason] = counted(text, decisions, policy="prefix", reason=reason)
        # each replica's own series (by ReplicaId): both served conversations with hits
        found["replicas with hits"] = len(
            set(re.findall(r'ray_vllm_prefix_cache_hits_total\{[^}]*ReplicaId="([^"]+)"', text))
        )
        return all(value > 0 for value in found.values()) and found["replicas with hits"] == 2

    # the earlier tests' conversations matched, their pins were affinities
    try:
        wait_for(exported, timeout=120, interval=2)
    except AssertionError as error:
        raise AssertionError(f"not on Ray's metrics endpoint: {found}") from error


def complete(app, model: str) -> httpx.Response:
    return httpx.post(app.base_url + "/v1/completions", json={"model": model, **PROMPT}, timeout=60)


def load_adapter(app, tiny_lora: Path) -> None:
    """Load the `runtime` adapter through whichever replica takes the request (once: vLLM
    refuses a name already loaded) and wait until both replicas list it."""
    if not all("runtime" in v for v in replicas(app).values()):
        load = {"lora_name": "runtime", "lora_path": str(tiny_lora)}
        response = httpx.post(app.base_url + "/v1/load_lora_adapter", json=load, timeout=60)
        assert response.status_code == 200, response.text
    wait_for(lambda: all(v == ["runtime"] for v in replicas(app).values()), timeout=30)


# ------------------------------------------------------------------------------ runtime LoRA
def test_an_adapter_loaded_once_is_served_by_every_replica(app, tiny_lora):
    base = complete(app, "tiny").json()["choices"][0]["text"]
    if "runtime" not in {a for v in replicas(app).values() for a in v}:
        assert complete(app, "runtime").status_code == 404
    load_adapter(app, tiny_lora)
    for _ in range(6):  # /v1/models of whichever replica answers lists it
        ids = [m["id"] for m in httpx.get(app.base_url + "/v1/models").json()["data"]]
        assert "runtime" in ids
    with concurrent.futures.ThreadPoolExecutor(6) as pool:  # spread over both replicas
        answers = list(pool.map(lambda _: complete(app, "runtime"), range(6)))
    texts = {a.json()["choices"][0]["text"] for a in answers}
    assert len(texts) == 1 and base not in texts  # the adapter's output, on each replica


# ------------------------------------------------------------------- a replica killed mid-run
def status(app, job_id: str) -> str | None:
    """A job's status, or None while the request fails (HAProxy may still send a request to the
    killed replica until Serve has noticed it is gone: a client retries)."""
    try:
        answer = httpx.get(f"{app.base_url}/v2/local/status/{job_id}", timeout=30)
    except httpx.TransportError:
        return None
    return answer.json()["status"] if answer.status_code == 200 else None


def test_a_replica_killed_mid_run_loses_no_job_and_its_replacement_serves_and_has_the_adapter(
    app, tiny_lora
):
    """One kill (a replica start is most of this module's time) checks both: the jobs the
    killed replica ran finish elsewhere, and its replacement gets new conversations and loads
    the runtime adapter loaded before it started."""
    load_adapter(app, tiny_lora)
    before = replica_stats(app)
    victim = next(iter(before))
    ids = []
    for i in range(8):  # running on both replicas when one is killed
        job = {"prompt": SYSTEMS[i % 4] + f" job {i}", "sampling_params": {"max_tokens": 256}}
        answer = httpx.post(app.base_url + "/v2/local/run", json={"input": job}, timeout=30)
        assert answer.status_code == 200, answer.text
        ids.append(answer.json()["id"])
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: all(status(app, job_id) == "COMPLETED" for job_id in ids), timeout=300)
    new = wait_for(lambda: new_replicas(app, before), timeout=300, interval=1).pop()
    assert replicas(app)[new] == ["runtime"]  # loaded before it served
    used = set()  # it enters the routing: new conversations reach it
    for system in SYSTEMS:
        snapshot = prefix_cache(app)
        used |= set(served(app, snapshot, sum(converse(app, "Again. " + system, turns=1))))
    assert new in used


def test_an_adapter_unloaded_once_is_gone_from_every_replica(app, tiny_lora):
    load_adapter(app, tiny_lora)
    unload = httpx.post(
        app.base_url + "/v1/unload_lora_adapter", json={"lora_name": "runtime"}, timeout=60
    )
    assert unload.status_code == 200, unload.text
    wait_for(lambda: all(v == [] for v in replicas(app).values()), timeout=30)
    assert complete(app, "runtime").status_code == 404


def test_a_bad_adapter_path_is_refused_and_not_shared(app):
    load = {"lora_name": "broken", "lora_path": "/nowhere/adapter"}
    response = httpx.post(app.base_url + "/v1/load_lora_adapter", json=load, timeout=60)
    assert 400 <= response.status_code < 500, response.text
    assert "error" in response.json()
    assert all("broken" not in v for v in replicas(app).values())
