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
    """What the router reads of a replica, answering its load as told."""

    def __init__(self, name: str, load: int):
        from ray.serve._private.common import DeploymentID, ReplicaID

        self.replica_id = ReplicaID(unique_id=name, deployment_id=DeploymentID("LLM", "app"))
        self.load, self.asked = load, 0
        self.node_id, self.availability_zone = "node", None
        self.multiplexed_model_ids: set[str] = set()
        self.routing_stats: dict = {}
        self.max_ongoing_requests = 100

    async def get_queue_len(self, *, deadline_s: float) -> int:
        self.asked += 1
        await asyncio.sleep(0.01)
        return self.load


def test_route_only_picks_ask_the_replicas_once_per_burst_and_follow_their_answers():
    from types import SimpleNamespace

    from ray.serve._private.common import DeploymentHandleSource, DeploymentID
    from ray.serve.request_router import PendingRequest

    from serve_app.routing.serve_router import FRESH_S, ROUTE_ONLY, PolicyRouter

    async def scenario() -> None:
        router = PolicyRouter(
            DeploymentID("LLM", "app"),
            DeploymentHandleSource.UNKNOWN,
            use_replica_queue_len_cache=True,
        )
        router.initialize_state(policy="prefix")
        busy, idle = FakeReplica("busy", 0), FakeReplica("idle", 0)
        router.update_replicas([busy, idle])  # Serve asks new replicas their loads: 0, 0
        await asyncio.sleep(FRESH_S * 2)
        busy.load, busy.asked, idle.asked = 3, 0, 0  # requests reached it, not through here

        async def pick(i: int) -> str:
            body = {"prompt": f"{i} " + "unshared words " * 40}  # nothing to match: by load
            request = PendingRequest([body], {ROUTE_ONLY: True}, SimpleNamespace(session_id=None))
            ranks = await router.choose_replicas([busy, idle], request)
            return ranks[0][0].replica_id.unique_id

        # a burst: one question to each replica, then picks counted on its answers
        assert await asyncio.gather(*(pick(i) for i in range(3))) == ["idle"] * 3
        assert (busy.asked, idle.asked) == (1, 1)
        # the busy replica finished its requests; the replicas are asked again, not assumed
        busy.load, idle.load = 0, 3
        await asyncio.sleep(FRESH_S * 2)
        assert await pick(3) == "busy"
        assert (busy.asked, idle.asked) == (2, 2)

    asyncio.run(scenario())
