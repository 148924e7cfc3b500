"""What the request router reads of a call (serve_app/routing/serve_router.py): the body and
session of each caller's arguments, the same whichever path the request came by."""

from __future__ import annotations

import asyncio
import json

from serve_app.http.asgi import HttpRequest
from serve_app.routing.policy import routing_text
from serve_app.routing.serve_router import SESSION, request_body

CHAT = {"model": "m", "messages": [{"role": "user", "content": "Where is the fox?"}]}


def test_the_router_ingress_passes_an_http_request_whose_body_and_session_header_are_read():
    request = HttpRequest.json("/v1/chat/completions", json.dumps(CHAT).encode())
    request.headers.append((b"X-Session-Id", b"s-1"))
    assert request_body([request], {}) == (CHAT, "s-1")


def test_a_runpod_job_routes_by_its_openai_input_or_its_own_prompt():
    wrapped = {"openai_route": "/v1/chat/completions", "openai_input": CHAT}
    assert request_body([wrapped], {}) == (CHAT, None)
    job = {"messages": CHAT["messages"], "sampling_params": {"max_tokens": 4}}
    body, _ = request_body([job], {})
    assert routing_text(body) == routing_text(CHAT)  # the same replica as over HTTP


def test_the_route_picker_passes_the_parsed_body_and_the_session_as_a_keyword():
    assert request_body([CHAT], {SESSION: "s-2"}) == (CHAT, "s-2")


def test_serves_python_proxy_passes_no_body_yet_but_its_session_header_is_read():
    from ray.serve._private.common import StreamingHTTPRequest

    async def receive(_):  # never called: the router does not read the body
        raise AssertionError

    scope = {"type": "http", "headers": [(b"x-session-id", b"s-3")]}
    request = StreamingHTTPRequest(scope, receive_asgi_messages=receive)
    assert request_body([request], {}) == (None, "s-3")


def test_calls_without_a_json_body_route_by_load_only():
    assert request_body([], {}) == (None, None)
    assert request_body([HttpRequest("GET", "/v1/models")], {}) == (None, None)
    assert request_body([HttpRequest.json("/v1/completions", b"{not json")], {}) == (None, None)
    assert request_body([HttpRequest.json("/v1/completions", b"[1, 2]")], {}) == (None, None)


def test_the_app_reads_haproxy_and_forward_body_as_ray_was_started_not_as_first_imported(
    monkeypatch,
):
    import ray.serve._private.constants  # noqa: F401  (Serve's reading, frozen at import)

    from serve_app.app import haproxy_on
    from serve_app.config.ray_env import ray_setting_on

    monkeypatch.setenv("RAY_SERVE_ENABLE_HA_PROXY", "1")
    monkeypatch.setenv("RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY", "1")
    assert haproxy_on() and ray_setting_on("RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY")
    monkeypatch.setenv("RAY_SERVE_ENABLE_HA_PROXY", "0")
    assert not haproxy_on()


class FakeReplica:
    """What the router reads of a replica, answering its load as told (once `gate` opens)."""

    def __init__(self, name: str, load: int):
        from ray.serve._private.common import DeploymentID, ReplicaID

        self.replica_id = ReplicaID(unique_id=name, deployment_id=DeploymentID("LLM", "app"))
        self.load, self.asked = load, 0
        self.gate: asyncio.Event | None = None
        self.node_id, self.availability_zone = "node", None
        self.multiplexed_model_ids: set[str] = set()
        self.routing_stats: dict = {}
        self.max_ongoing_requests = 100

    async def get_queue_len(self, *, deadline_s: float) -> int:
        self.asked += 1
        load = self.load  # as the replica counts when asked
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(0.01)
        return load


def route_only_router():
    from ray.serve._private.common import DeploymentHandleSource, DeploymentID

    from serve_app.routing.serve_router import PolicyRouter

    router = PolicyRouter(
        DeploymentID("LLM", "app"), DeploymentHandleSource.UNKNOWN, use_replica_queue_len_cache=True
    )
    router.initialize_state(policy="prefix")
    return router


async def pick(router, replicas: list[FakeReplica], i: int) -> str:
    """A route-only pick of a prompt that matches nothing (so: by load); the replica's name."""
    from types import SimpleNamespace

    from ray.serve.request_router import PendingRequest

    from serve_app.routing.serve_router import ROUTE_ONLY

    body = {"prompt": f"{i} " + "unshared words " * 40}
    request = PendingRequest([body], {ROUTE_ONLY: True}, SimpleNamespace(session_id=None))
    ranks = await router.choose_replicas(replicas, request)
    return ranks[0][0].replica_id.unique_id


def test_a_pick_that_finds_no_replica_idle_asks_them_once_per_burst_and_follows_the_answers(
    monkeypatch,
):
    from serve_app.routing import serve_router

    monkeypatch.setattr(serve_router, "FRESH_S", 0.05)
    monkeypatch.setattr(serve_router, "IDLE_S", 0.3)

    async def scenario() -> None:
        router = route_only_router()
        busy, idle = FakeReplica("busy", 3), FakeReplica("idle", 0)
        router.update_replicas([busy, idle])  # Serve asks new replicas their loads
        await asyncio.sleep(0.05)
        router.on_new_queue_len_info(busy.replica_id, 3)  # both busy, as the router last heard
        router.on_new_queue_len_info(idle.replica_id, 2)  # ... since then this one finished
        busy.asked = idle.asked = 0

        # a burst: one question to each replica first, then picks counted on its answers
        replicas = [busy, idle]
        picks = await asyncio.gather(*(pick(router, replicas, i) for i in range(3)))
        assert picks == ["idle"] * 3
        assert (busy.asked, idle.asked) == (1, 1)
        # the busy replica finished its requests: the background questions tell the router
        busy.load, idle.load = 0, 3
        await asyncio.sleep(serve_router.FRESH_S * 3)
        assert busy.asked >= 2 and idle.asked >= 2
        assert await pick(router, replicas, 3) == "busy"
        # IDLE_S after the last pick the questions stop
        await asyncio.sleep(serve_router.IDLE_S + serve_router.FRESH_S * 3)
        asked = (busy.asked, idle.asked)
        await asyncio.sleep(serve_router.FRESH_S * 3)
        assert (busy.asked, idle.asked) == asked

    asyncio.run(scenario())


def test_a_pick_that_finds_a_replica_idle_goes_there_without_a_question():
    async def scenario() -> None:
        router = route_only_router()
        a, b = FakeReplica("a", 0), FakeReplica("b", 0)
        a.gate = b.gate = asyncio.Event()  # a question would hang
        router.update_replicas([a, b])
        router.on_new_queue_len_info(a.replica_id, 2)
        router.on_new_queue_len_info(b.replica_id, 0)
        assert await asyncio.wait_for(pick(router, [a, b], 0), 1.0) == "b"

    asyncio.run(scenario())


def test_picks_made_while_a_question_is_out_are_added_to_its_answer():
    async def scenario() -> None:
        router = route_only_router()
        a, b = FakeReplica("a", 0), FakeReplica("b", 0)
        router.update_replicas([a, b])  # Serve asks new replicas their loads
        await asyncio.sleep(0.05)
        a.asked = b.asked = 0
        gate = asyncio.Event()
        a.gate = b.gate = gate  # the background question hangs until the gate opens
        first = await pick(router, [a, b], 0)  # starts the background questions
        for _ in range(300):  # bounded: the first goes out after FRESH_S
            if a.asked and b.asked:
                break
            await asyncio.sleep(0.01)
        assert a.asked and b.asked
        # the other is still idle as far as the router knows: no waiting for the question
        other = {"a": b, "b": a}[first]
        assert await asyncio.wait_for(pick(router, [a, b], 1), 1.0) == other.replica_id.unique_id
        # the replicas answer as they counted when asked, before that request reached it
        gate.set()
        await asyncio.sleep(0.05)
        assert router._replica_queue_len_cache.get(other.replica_id) == 1

    asyncio.run(scenario())
