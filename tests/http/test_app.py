"""The ingress app's guarantees on every route (serve_app/http/app.py), against a fake engine:
the API key (OpenAI's and Anthropic's headers), the body limit, RunPod's OpenAI base URLs, and
each protocol's error shape. Milliseconds, no Ray cluster, no vLLM."""

from __future__ import annotations

import asyncio
import hashlib

import httpx
import pytest

from serve_app.config.plan import IngressOptions, ModelRoutes
from serve_app.http.admission import GenerationSlots
from serve_app.http.app import build_http_app
from serve_app.http.errors import protocol_of, split_openai_prefix
from serve_app.http.model_api import ModelApi
from tests.contracts import validate
from tests.fake_engine import FakeEngine

KEY = "sk-test-key"
LIMIT = 4096


async def healthy() -> tuple[bool, dict]:
    return True, {}


def ingress_app(**options):
    fields = {
        "mode": "llm",
        "models": ModelRoutes(routes={"fake": "LLM"}, default_deployment="LLM"),
        "num_replicas": 1,
        "replica_wait_timeout_s": 1,
        "runsync_timeout_s": 1,
        "endpoint_id": "ep",
        "max_request_bytes": LIMIT,
        "api_key_sha256": hashlib.sha256(KEY.encode()).hexdigest(),
        **options,
    }
    api = ModelApi(FakeEngine().app, GenerationSlots(4, 4))
    return build_http_app(IngressOptions(**fields), api, healthy)


def request(method: str, path: str, **kwargs) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=ingress_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


BEARER = {"Authorization": f"Bearer {KEY}"}


def test_the_key_is_accepted_as_bearer_or_as_anthropics_x_api_key():
    body = {"model": "fake", "max_tokens": 1}
    assert request("POST", "/v1/completions", json=body, headers=BEARER).status_code == 200
    ok = request("POST", "/v1/messages", json=body, headers={"x-api-key": KEY})
    assert ok.status_code == 200
    assert request("GET", "/health").status_code == 200  # no key needed
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    assert request("OPTIONS", "/v1/completions", headers=preflight).status_code != 401
    # a bare key in Authorization (no scheme) counts too, as it always has
    bare = request("POST", "/tokenize", json={"prompt": "a"}, headers={"Authorization": KEY})
    assert bare.status_code == 200


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/v1/completions", {}),
        ("/v1/completions", {"Authorization": "Bearer wrong"}),
        ("/v1/completions", {"x-api-key": "wrong"}),
        ("/tokenize", {"Authorization": "Basic " + KEY}),
    ],
)
def test_a_missing_or_wrong_key_is_401_in_openais_shape(path, headers):
    response = request("POST", path, json={"model": "fake"}, headers=headers)
    assert response.status_code == 401
    validate("ErrorResponse", response.json())
    assert "x-api-key" in response.json()["error"]["message"]


def test_a_websocket_without_the_key_is_closed():
    sent: list[dict] = []

    async def scenario():
        async def receive():
            return {"type": "websocket.connect"}

        async def send(message):
            sent.append(message)

        scope = {"type": "websocket", "path": "/v1/realtime", "headers": [], "query_string": b""}
        await ingress_app()(scope, receive, send)

    asyncio.run(scenario())
    assert sent == [{"type": "websocket.close", "code": 1008, "reason": "invalid API key"}]


def test_anthropic_routes_answer_401_and_413_in_anthropics_shape():
    response = request("POST", "/v1/messages", json={"model": "fake"})
    assert response.status_code == 401
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == "authentication_error"
    big = {"model": "fake", "max_tokens": 1, "messages": [{"role": "user", "content": "x" * LIMIT}]}
    response = request("POST", "/v1/messages", json=big, headers={"x-api-key": KEY})
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "request_too_large"
    assert "MAX_REQUEST_BYTES" in response.json()["error"]["message"]


def test_runpods_base_urls_serve_every_v1_route_and_check_the_endpoint():
    body = {"model": "fake", "max_tokens": 1}
    for prefix in ("/openai", "/v2/ep/openai"):
        response = request("POST", prefix + "/v1/messages", json=body, headers=BEARER)
        assert response.status_code == 200, response.text
    response = request("POST", "/v2/other/openai/v1/completions", json=body, headers=BEARER)
    assert response.status_code == 404
    assert "Unknown endpoint 'other'" in response.json()["error"]["message"]


def test_unknown_routes_and_methods_answer_in_the_paths_protocol():
    assert request("GET", "/v2/ep/status/x/y", headers=BEARER).json().keys() == {"error"}
    response = request("DELETE", "/health", headers=BEARER)  # a route of this app: 405
    assert response.status_code == 405
    assert "DELETE is not allowed" in response.json()["error"]["message"]
    response = request("GET", "/v1/nothing", headers=BEARER)  # the model API's: 404
    assert response.status_code == 404
    validate("ErrorResponse", response.json())


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1/chat/completions", "openai"),
        ("/v1/messages", "anthropic"),
        ("/v1/messages/count_tokens", "anthropic"),
        ("/openai/v1/messages", "anthropic"),
        ("/v2/ep/openai/v1/messages", "anthropic"),
        ("/v2/ep/openai/v1/embeddings", "openai"),
        ("/v2/ep/run", "runpod"),
        ("/v2/ep/status/abc", "runpod"),
        ("/v2/rerank", "openai"),  # vLLM's Cohere-style route, not a RunPod endpoint
        ("/tokenize", "openai"),
    ],
)
def test_protocol_of_each_path(path, expected):
    assert protocol_of(path) == expected


def test_openai_prefixes_split():
    assert split_openai_prefix("/openai/v1/models") == ("/v1/models", None)
    assert split_openai_prefix("/v2/ep/openai/v1/responses/x") == ("/v1/responses/x", "ep")
    assert split_openai_prefix("/v2/ep/openai/v10/x") is None
    assert split_openai_prefix("/v1/models") is None
