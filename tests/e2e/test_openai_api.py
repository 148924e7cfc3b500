"""OpenAI API end to end: the real Ray Serve app, the real vLLM engine on CPU, the openai SDK.

One app (tiny random model, a LoRA adapter, a custom chat template, tool parsing) is shared by
the module. Engine death, overload and fuzzing are in test_reliability.py.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import jsonschema
import openai
import pytest

from tests.contracts import validate

pytestmark = pytest.mark.e2e

CHAT_TEMPLATE = (
    "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant] {% endif %}"
)
MESSAGES = [{"role": "user", "content": "Hello world! How are you today?"}]
GREEDY = {"temperature": 0, "extra_body": {"ignore_eos": True}}


@pytest.fixture(scope="module")
def app(serve_cluster, tiny_model: Path, tiny_lora: Path, tmp_path_factory):
    env = {
        "MODEL_NAME": str(tiny_model),
        "OPENAI_SERVED_MODEL_NAME_OVERRIDE": "tiny",
        "ENABLE_LORA": "1",
        "MAX_LORA_RANK": "8",
        "LORA_MODULES": json.dumps([{"name": "tiny-lora", "path": str(tiny_lora)}]),
        "CUSTOM_CHAT_TEMPLATE": CHAT_TEMPLATE,
        "ENABLE_AUTO_TOOL_CHOICE": "1",
        "TOOL_CALL_PARSER": "hermes",
        "BASE_PATH": str(tmp_path_factory.mktemp("base")),
        # A random model would fill JSON with whitespace; a vLLM engine arg set by its env var.
        "STRUCTURED_OUTPUTS_CONFIG": '{"disable_any_whitespace": true}',
        "GUIDED_DECODING_BACKEND": "xgrammar",
    }
    with serve_cluster.deployed(env) as app:
        yield app


@pytest.fixture(scope="module")
def client(app):
    return app.openai()


def prompt_tokens(tiny_model: Path, messages: list[dict]) -> int:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    encoded = tokenizer.apply_chat_template(
        messages,
        chat_template=CHAT_TEMPLATE,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
    )
    return len(encoded["input_ids"])


def raw_sse(app, path: str, body: dict) -> list[dict | str]:
    """The events of an SSE response, JSON-decoded, with the terminal "[DONE]" kept as is."""
    events: list[dict | str] = []
    with httpx.stream("POST", app.base_url + path, json=body, timeout=120) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                data = line.removeprefix("data: ")
                events.append(data if data == "[DONE]" else json.loads(data))
    return events


# ---------------------------------------------------------------- models and routes
def test_models_lists_the_served_name_and_the_lora_adapter(client, app):
    models = {m.id: m for m in client.models.list()}
    assert set(models) == {"tiny", "tiny-lora"}
    assert models["tiny-lora"].model_extra.get("parent") == "tiny"
    validate("ListModelsResponse", httpx.get(app.base_url + "/v1/models").json())


@pytest.mark.parametrize("prefix", ["/openai/v1", "/v2/my-endpoint/openai/v1"])
def test_runpod_style_base_urls_serve_the_same_api(app, prefix):
    client = app.openai(prefix)
    assert [m.id for m in client.models.list()] == ["tiny", "tiny-lora"]
    reply = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=3, **GREEDY)
    assert reply.usage.completion_tokens == 3


def test_health(app):
    response = httpx.get(app.base_url + "/health")
    assert response.status_code == 200
    assert response.json()["deployments"]["LLM"]["running_replicas"] == 1


def test_served_model_name_override_replaces_the_path(client, tiny_model):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=str(tiny_model), messages=MESSAGES, max_tokens=2)


# ---------------------------------------------------------------- chat completions
def test_chat_non_streaming_conforms_and_counts_usage(app, tiny_model):
    body = {
        "model": "tiny",
        "messages": MESSAGES,
        "max_tokens": 7,
        "temperature": 0,
        "ignore_eos": True,
    }
    response = httpx.post(app.base_url + "/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 200
    reply = response.json()
    validate("CreateChatCompletionResponse", reply)
    assert reply["model"] == "tiny"
    assert reply["choices"][0]["finish_reason"] == "length"
    assert reply["usage"]["completion_tokens"] == 7
    # The custom chat template (CUSTOM_CHAT_TEMPLATE) decides the prompt's tokens.
    assert reply["usage"]["prompt_tokens"] == prompt_tokens(tiny_model, MESSAGES)
    assert reply["usage"]["total_tokens"] == reply["usage"]["prompt_tokens"] + 7


def test_chat_streaming_conforms_ends_with_done_and_reports_usage(app, client):
    body = {
        "model": "tiny",
        "messages": MESSAGES,
        "max_tokens": 6,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    events = raw_sse(app, "/v1/chat/completions", body)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk)
    assert chunks[-1]["usage"]["completion_tokens"] == 6
    streamed = "".join(
        c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]
    )

    # The SDK sees the same text as the non-streaming call.
    reply = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=6, **GREEDY)
    assert streamed == reply.choices[0].message.content


def test_n_returns_independent_choices(client):
    reply = client.chat.completions.create(
        model="tiny",
        messages=MESSAGES,
        max_tokens=5,
        n=3,
        temperature=1.0,
        seed=1,
        extra_body={"ignore_eos": True},
    )
    assert sorted(c.index for c in reply.choices) == [0, 1, 2]
    assert reply.usage.completion_tokens == 15


def test_stop_string_cuts_the_output_before_it(client):
    full = client.completions.create(
        model="tiny", prompt="The quick brown", max_tokens=40, **GREEDY
    )
    text = full.choices[0].text
    candidates = [text[i : i + 2] for i in range(4, len(text) - 2) if text[i : i + 2].strip()]
    stop = next(c for c in candidates if text.index(c) >= 4)
    cut = client.completions.create(
        model="tiny", prompt="The quick brown", max_tokens=40, stop=[stop], **GREEDY
    )
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].text == text[: text.index(stop)]


def test_seed_makes_sampling_repeatable(client):
    def sample(seed: int) -> str:
        reply = client.chat.completions.create(
            model="tiny",
            messages=MESSAGES,
            max_tokens=12,
            temperature=1.0,
            seed=seed,
            extra_body={"ignore_eos": True},
        )
        return reply.choices[0].message.content

    assert sample(7) == sample(7)
    assert len({sample(s) for s in range(1, 5)}) > 1


def test_logprobs(client):
    reply = client.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=4, logprobs=True, top_logprobs=2, **GREEDY
    )
    content = reply.choices[0].logprobs.content
    assert len(content) == 4
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)


def test_vllm_extra_sampling_parameters_are_honoured(client):
    reply = client.chat.completions.create(
        model="tiny",
        messages=MESSAGES,
        max_tokens=9,
        temperature=0.8,
        extra_body={"top_k": 5, "min_p": 0.1, "repetition_penalty": 1.3, "ignore_eos": True},
    )
    assert reply.usage.completion_tokens == 9
    with pytest.raises(openai.BadRequestError, match="top_k"):
        client.chat.completions.create(
            model="tiny", messages=MESSAGES, max_tokens=2, extra_body={"top_k": -5}
        )


def test_structured_output_follows_the_json_schema(client):
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    reply = client.chat.completions.create(
        model="tiny",
        messages=MESSAGES,
        max_tokens=60,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
    )
    jsonschema.validate(json.loads(reply.choices[0].message.content), schema)


def test_tool_calls_use_the_configured_parser_and_openai_shape(app):
    # vLLM answers a named tool_choice only with a tool-call parser (TOOL_CALL_PARSER=hermes
    # here); without one it is a 400. What the random model puts in `arguments` is its own.
    parameters = {"type": "object", "properties": {"city": {"type": "string"}}}
    body = {
        "model": "tiny",
        "messages": MESSAGES,
        "max_tokens": 120,
        "temperature": 0,
        "tools": [{"type": "function", "function": {"name": "weather", "parameters": parameters}}],
        "tool_choice": {"type": "function", "function": {"name": "weather"}},
    }
    response = httpx.post(app.base_url + "/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    reply = response.json()
    validate("CreateChatCompletionResponse", reply)
    calls = reply["choices"][0]["message"]["tool_calls"]
    assert calls and all(c["type"] == "function" for c in calls)
    assert {c["function"]["name"] for c in calls} == {"weather"}
    assert all(isinstance(c["function"]["arguments"], str) for c in calls)


def test_lora_adapter_is_selectable_by_model_name(client):
    def greedy(model: str) -> str:
        reply = client.chat.completions.create(
            model=model, messages=MESSAGES, max_tokens=12, **GREEDY
        )
        assert reply.model == model
        return reply.choices[0].message.content

    assert greedy("tiny-lora") != greedy("tiny")


# ---------------------------------------------------------------- completions
def test_completions_streaming_and_not(app, client):
    reply = client.completions.create(model="tiny", prompt="Ray Serve", max_tokens=5, **GREEDY)
    assert reply.usage.completion_tokens == 5
    body = {
        "model": "tiny",
        "prompt": "Ray Serve",
        "max_tokens": 5,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
    }
    events = raw_sse(app, "/v1/completions", body)
    assert events[-1] == "[DONE]"
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == reply.choices[0].text
    raw = httpx.post(app.base_url + "/v1/completions", json={**body, "stream": False}).json()
    validate("CreateCompletionResponse", raw)


# ---------------------------------------------------------------- errors
def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    document = response.json()
    validate("ErrorResponse", document)
    assert "Traceback" not in document["error"]["message"]
    return document["error"]


def test_unknown_model_is_404_model_not_found(app, client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4", messages=MESSAGES)
    error = error_of(
        httpx.post(
            app.base_url + "/v1/chat/completions", json={"model": "gpt-4", "messages": MESSAGES}
        ),
        404,
    )
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert "gpt-4" in error["message"] and "tiny" in error["message"]


@pytest.mark.parametrize(
    ("field", "value"),
    [("temperature", -1), ("top_p", 2), ("n", 0), ("max_tokens", -3), ("messages", "hi")],
)
def test_invalid_parameters_are_400_naming_the_parameter(app, client, field, value):
    body = {"model": "tiny", "messages": MESSAGES, field: value}
    error = error_of(httpx.post(app.base_url + "/v1/chat/completions", json=body), 400)
    assert field in error["message"] or error["param"] == field
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(**body)


def test_prompt_longer_than_the_context_is_400(app, client):
    body = {"model": "tiny", "prompt": "hello " * 40000, "max_tokens": 1}
    error = error_of(httpx.post(app.base_url + "/v1/completions", json=body, timeout=60), 400)
    assert error["code"] == "context_length_exceeded"
    assert "maximum context length" in error["message"]


def test_malformed_json_and_unknown_routes_use_openai_error_shape(app):
    error = error_of(
        httpx.post(
            app.base_url + "/v1/chat/completions",
            content=b"{not json",
            headers={"content-type": "application/json"},
        ),
        400,
    )
    assert "not valid JSON" in error["message"]
    error_of(httpx.post(app.base_url + "/v1/chat/completions", json=["a"]), 400)
    error = error_of(httpx.get(app.base_url + "/v1/nothing-here"), 404)
    assert "/v1/nothing-here" in error["message"]
    error_of(httpx.get(app.base_url + "/v1/chat/completions"), 405)


# ---------------------------------------------------------------- disconnects and metrics
def test_client_disconnect_mid_stream_aborts_the_generation(app):
    body = {
        "model": "tiny",
        "prompt": "Hello",
        "max_tokens": 30000,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
    }
    with httpx.stream("POST", app.base_url + "/v1/completions", json=body, timeout=60) as response:
        lines = response.iter_lines()  # held: dropping it would close the response
        started = time.monotonic()
        received = sum(next(lines).startswith("data: ") for _ in range(100))
        rate = received / (time.monotonic() - started)  # tokens per second
        assert app.engine_requests() == 1  # still generating
        response.close()  # the client goes away mid-stream
    # The engine must stop well before the ~30000 tokens it would otherwise still generate.
    remaining_s = (30000 - received) / rate
    deadline = time.monotonic() + min(10.0, remaining_s / 2)
    while app.engine_requests() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert app.engine_requests() == 0


def test_vllm_metrics_are_exported_through_rays_metrics_endpoint(app, client):
    """vLLM's counters, gauges and histograms reach the node's metrics endpoint under the
    names vLLM's Ray logger gives them; a histogram as its cumulative series."""
    import ray

    client.completions.create(model="tiny", prompt="metrics", max_tokens=3)
    port = ray._private.worker.global_worker.node.metrics_export_port
    url = f"http://127.0.0.1:{port}/metrics"

    def series(text: str, name: str) -> list[tuple[str, float]]:
        """(labels, value) of every sample of `name` in the endpoint's `text`."""
        found = re.findall(rf"^{name}{{(.*)}} (\S+)$", text, flags=re.MULTILINE)
        return [(labels, float(value)) for labels, value in found]

    ttft = "ray_vllm_time_to_first_token_seconds"
    deadline = time.monotonic() + 90  # copied every 10 s; Ray exports every few seconds
    text = httpx.get(url, timeout=10).text
    while not series(text, f"{ttft}_count") and time.monotonic() < deadline:
        time.sleep(2)
        text = httpx.get(url, timeout=10).text
    requests = sum(value for _, value in series(text, f"{ttft}_count"))
    assert requests >= 1, "no vLLM time-to-first-token histogram on Ray's metrics endpoint"
    buckets = series(text, f"{ttft}_bucket")
    assert sum(value for labels, value in buckets if 'le="+Inf"' in labels) == requests
    assert all('ReplicaId="' in labels for labels, _ in buckets)
    assert sum(value for _, value in series(text, "ray_vllm_generation_tokens_total")) >= 3
    assert series(text, "ray_vllm_num_requests_running"), "no vLLM gauge on the endpoint"


def test_haproxy_answers_on_the_endpoint_and_its_side_ports_only_on_loopback(app):
    import psutil

    from tests.conftest import descendants

    haproxies = [p for p in descendants() if p.name() == "haproxy"]
    assert haproxies
    listening = {
        (c.laddr.ip, c.laddr.port)
        for p in haproxies
        for c in p.net_connections("inet")
        if c.status == psutil.CONN_LISTEN
    }
    side = {address for address in listening if address[1] != app.cluster.port}
    assert side and {ip for ip, _ in side} == {"127.0.0.1"}, listening  # stats, metrics
