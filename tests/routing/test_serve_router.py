"""What the request router reads of a call (serve_app/routing/serve_router.py): the body and
session of each caller's arguments, the same whichever path the request came by."""

from __future__ import annotations

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


def test_calls_without_a_json_body_route_by_load_only():
    assert request_body([], {}) == (None, None)
    assert request_body([HttpRequest("GET", "/v1/models")], {}) == (None, None)
    assert request_body([HttpRequest.json("/v1/completions", b"{not json")], {}) == (None, None)
    assert request_body([HttpRequest.json("/v1/completions", b"[1, 2]")], {}) == (None, None)


def test_the_app_reads_haproxy_and_forward_body_as_ray_was_started_not_as_first_imported(
    monkeypatch,
):
    import ray.serve._private.constants  # noqa: F401  (Serve's reading, frozen at import)

    from serve_app.app import haproxy_on, ray_setting_on

    monkeypatch.setenv("RAY_SERVE_ENABLE_HA_PROXY", "1")
    monkeypatch.setenv("RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY", "1")
    assert haproxy_on() and ray_setting_on("RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY")
    monkeypatch.setenv("RAY_SERVE_ENABLE_HA_PROXY", "0")
    assert not haproxy_on()
