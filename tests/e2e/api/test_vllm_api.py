"""Every route `vllm serve` answers, through this app, with the clients people point at vLLM:
the openai SDK (Responses), the anthropic SDK (messages), LangChain (forced tool calls and
structured output with the default configuration), curl (tokenize), the runpod job API
(`openai_route`). The real Ray Serve app and the real vLLM engine on CPU (tiny model), with
API_KEY set and two generation slots (conftest.py), so auth, limits and overload are checked
on new routes.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Literal

import anthropic
import httpx
import openai
import pytest
from pydantic import BaseModel, Field

from serve_app.http.model_api import EXCLUDED
from tests.conftest import wait_for
from tests.contracts import errors, validate
from tests.e2e.api.conftest import API_KEY, ENDPOINT, MAX_REQUEST_BYTES

pytestmark = pytest.mark.e2e

AUTH = {"Authorization": f"Bearer {API_KEY}"}
MESSAGES = [{"role": "user", "content": "Hello world! How are you today?"}]


@pytest.fixture(scope="module")
def client(app) -> openai.OpenAI:
    return app.openai(api_key=API_KEY)


def post(app, path: str, body: object = None, **kwargs) -> httpx.Response:
    headers = {**AUTH, **kwargs.pop("headers", {})}
    return httpx.post(app.base_url + path, json=body, headers=headers, timeout=120, **kwargs)


# ---------------------------------------------------------------- every route
def vllm_serve_routes(tiny_model: Path, tasks: tuple[str, ...]) -> set[tuple[str, str]]:
    """(method, path) of every route `vllm serve` registers for the model, from vLLM's own
    router functions (what its /openapi.json lists)."""
    from fastapi import FastAPI
    from vllm.engine.arg_utils import EngineArgs
    from vllm.entrypoints.launchers.api_server.routers import register_api_routers

    from serve_app.engine.args import parse_argv

    args = parse_argv(["--model", str(tiny_model), "--dtype", "float32"])
    model_config = EngineArgs(model=str(tiny_model), dtype="float32").create_model_config()
    vllm_app = FastAPI()
    vllm_app.state.args = args
    register_api_routers(args, vllm_app, tasks, model_config)
    found = set()
    for route in vllm_app.routes:
        for method in getattr(route, "methods", None) or ():
            if method != "HEAD" and route.path not in ("/docs", "/redoc", "/openapi.json"):
                found.add((method, route.path))
    return found


def test_every_route_vllm_serve_registers_is_answered_but_the_documented_exclusions(
    app, tiny_model
):
    tasks = tuple(app.handle().stats.remote().result()["supported_tasks"])
    routes = vllm_serve_routes(tiny_model, tasks)
    paths = {path for _, path in routes}
    for expected in ("/v1/responses", "/v1/messages", "/tokenize", "/v1/chat/completions/batch"):
        assert expected in paths
    unanswered = []
    for method, path in sorted(routes):
        url = path.replace("{response_id}", "resp_nothing")
        body = {} if method == "POST" else None
        response = httpx.request(method, app.base_url + url, json=body, headers=AUTH, timeout=120)
        text = response.text
        if path in EXCLUDED:
            assert response.status_code == 404 and "is not served here" in text, text
        elif response.status_code in (404, 405) and (
            "Unknown route" in text or "not allowed" in text
        ):
            unanswered.append(f"{method} {path}: {response.status_code}")
        else:
            assert response.status_code < 500, f"{method} {path}: {text[:300]}"
    assert unanswered == []


# ---------------------------------------------------------------- Responses (openai SDK)
def test_responses_create_conforms_to_openais_schema(app, client):
    reply = client.responses.create(model="tiny", input="Hello", max_output_tokens=6)
    assert reply.status == "incomplete" and reply.usage.output_tokens == 6  # the random model
    assert reply.incomplete_details.reason == "max_output_tokens"
    assert isinstance(reply.output_text, str)
    body = {"model": "tiny", "input": "Hello", "max_output_tokens": 6}
    raw = post(app, "/v1/responses", body)
    assert raw.status_code == 200
    validate("Response", raw.json())


def test_responses_stream_with_the_sdk(client):
    events = list(
        client.responses.create(model="tiny", input="Hello", max_output_tokens=6, stream=True)
    )
    kinds = [event.type for event in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds
    final = events[-1].response
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert final.output_text == text


def test_responses_retrieve_and_cancel(client):
    done = client.responses.create(model="tiny", input="Hi", max_output_tokens=4, store=True)
    retrieved = client.responses.retrieve(done.id)
    assert (retrieved.status, retrieved.output_text) == (done.status, done.output_text)
    running = client.responses.create(
        model="tiny", input="Hi", max_output_tokens=20000, background=True, store=True
    )
    assert running.status in ("queued", "in_progress")
    cancelled = client.responses.cancel(running.id)
    assert cancelled.status == "cancelled"
    assert client.responses.retrieve(running.id).status == "cancelled"
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_does_not_exist")


# ---------------------------------------------------------------- Anthropic (anthropic SDK)
@pytest.fixture(scope="module")
def claude(app) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=app.base_url, api_key=API_KEY, max_retries=0, timeout=120)


def test_anthropic_messages_create_and_count_tokens(claude):
    message = claude.messages.create(model="tiny", max_tokens=6, messages=MESSAGES)
    assert message.role == "assistant" and message.usage.output_tokens <= 6
    assert message.content and message.content[0].type == "text"
    counted = claude.messages.count_tokens(model="tiny", messages=MESSAGES)
    assert counted.input_tokens == message.usage.input_tokens > 0


def test_anthropic_messages_stream(claude):
    with claude.messages.stream(model="tiny", max_tokens=8, messages=MESSAGES) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert final.content[0].text == text and final.usage.output_tokens <= 8


def test_anthropic_errors_use_anthropics_shape(app, claude):
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.create(model="no-such-model", max_tokens=4, messages=MESSAGES)
    unauthorized = httpx.post(
        app.base_url + "/v1/messages",
        json={"model": "tiny", "max_tokens": 4, "messages": MESSAGES},
        headers={"x-api-key": "wrong"},
    )
    assert unauthorized.status_code == 401
    assert unauthorized.json()["error"]["type"] == "authentication_error"
    bad = post(app, "/v1/messages", {"model": "tiny", "messages": MESSAGES})  # no max_tokens
    assert bad.status_code == 400 and bad.json()["type"] == "error"
    assert bad.json()["error"]["type"] == "invalid_request_error"


# ---------------------------------------------------------------- LangChain, forced tools
class Weather(BaseModel):
    """Get the weather for a city."""

    unit: Literal["celsius", "fahrenheit"] = Field(description="the temperature unit")


class City(BaseModel):
    name: str = Field(max_length=8)


@pytest.fixture(scope="module")
def chat_model(app, tiny_model):
    """LangChain's ChatOpenAI on this app. The random model would fill the JSON of a tool call
    with whitespace (which JSON allows) until max_tokens: tokens of whitespace only are banned,
    as a real model would not write them."""
    from langchain_openai import ChatOpenAI
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    blank = [i for i in range(len(tokenizer)) if not tokenizer.decode([i]).strip()]
    return ChatOpenAI(
        base_url=app.base_url + "/v1",
        api_key=API_KEY,
        model="tiny",
        temperature=0,
        max_tokens=64,
        max_retries=0,
        logit_bias=dict.fromkeys(blank, -100),
    )


def test_langchain_forced_tool_call_works_with_the_default_configuration(chat_model):
    """No TOOL_CALL_PARSER set: the replica chose one, so a forced call is answered (vLLM alone
    answers 400). `strict` has vLLM hold the arguments to the schema and one call, which a
    random model would not keep to by itself."""
    for choice in ("Weather", "any"):  # a named function, then "required"
        tools = chat_model.bind_tools(
            [Weather], tool_choice=choice, strict=True, parallel_tool_calls=False
        )
        reply = tools.invoke("Weather in Paris?")
        (call,) = reply.tool_calls
        assert call["name"] == "Weather"
        assert call["args"]["unit"] in ("celsius", "fahrenheit")


def test_langchain_structured_output(chat_model):
    city = chat_model.with_structured_output(City).invoke("Name a city")
    assert isinstance(city, City) and len(city.name) <= 8


# ---------------------------------------------------------------- tokenize (curl)
def curl(app, path: str, body: dict) -> dict:
    result = subprocess.run(
        ["curl", "-sS", "--max-time", "60", "-H", f"Authorization: Bearer {API_KEY}",
         "-H", "Content-Type: application/json", "-d", json.dumps(body), app.base_url + path],
        capture_output=True, text=True, timeout=90, check=True,
    )  # fmt: skip
    return json.loads(result.stdout)


def test_tokenize_and_detokenize_with_curl(app):
    tokens = curl(app, "/tokenize", {"model": "tiny", "prompt": "Hello world"})
    assert tokens["count"] == len(tokens["tokens"]) > 0
    text = curl(app, "/detokenize", {"model": "tiny", "tokens": tokens["tokens"]})
    assert "Hello world" in text["prompt"]
    chat = curl(app, "/tokenize", {"model": "tiny", "messages": MESSAGES})
    assert chat["count"] > tokens["count"]


def test_chat_completions_batch(app):
    body = {"model": "tiny", "messages": [MESSAGES, MESSAGES], "max_tokens": 3, "temperature": 0}
    response = post(app, "/v1/chat/completions/batch", body)
    assert response.status_code == 200, response.text
    assert sorted(c["index"] for c in response.json()["choices"]) == [0, 1]


# ---------------------------------------------------------------- our guarantees on new routes
def test_api_key_and_body_limit_hold_on_new_routes(app):
    body = {"model": "tiny", "input": "Hi", "max_output_tokens": 2}
    response = httpx.post(app.base_url + "/v1/responses", json=body)
    assert response.status_code == 401
    validate("ErrorResponse", response.json())
    big = {"model": "tiny", "input": "x" * MAX_REQUEST_BYTES}
    response = post(app, "/v1/responses", big)
    assert response.status_code == 413 and "MAX_REQUEST_BYTES" in response.text
    validate("ErrorResponse", response.json())
    assert post(app, "/openai/v1/responses", body).status_code == 200  # RunPod's base URL


def test_every_route_that_runs_the_engine_waits_for_a_slot_or_gets_503(app):
    """Two slots, no waiting line: with two streams running, Responses, Anthropic messages and
    completions get 503 + Retry-After in their protocol's shape; tokenize does not wait."""
    body = {"model": "tiny", "prompt": "Hello", "max_tokens": 30000, "stream": True}
    body |= {"ignore_eos": True, "temperature": 0}
    with httpx.Client(base_url=app.base_url, headers=AUTH, timeout=120) as http:
        streams = [http.stream("POST", "/v1/completions", json=body) for _ in range(2)]
        responses = [stream.__enter__() for stream in streams]
        lines = [response.iter_lines() for response in responses]  # held: closing one ends it
        try:
            for response, streamed in zip(responses, lines, strict=True):
                assert response.status_code == 200
                next(streamed)
            wait_for(lambda: app.handle().stats.remote().result()["running"] == 2, timeout=30)
            responses_api = post(app, "/v1/responses", {"model": "tiny", "input": "x"})
            assert responses_api.status_code == 503, responses_api.text
            assert responses_api.headers["retry-after"]
            validate("ErrorResponse", responses_api.json())
            messages = post(
                app, "/v1/messages", {"model": "tiny", "max_tokens": 2, "messages": MESSAGES}
            )
            assert messages.status_code == 503
            assert messages.json()["error"]["type"] == "overloaded_error"
            assert post(app, "/tokenize", {"model": "tiny", "prompt": "x"}).status_code == 200
        finally:
            for stream in streams:
                stream.__exit__(None, None, None)
    wait_for(lambda: app.handle().stats.remote().result()["running"] == 0, timeout=30)


# ---------------------------------------------------------------- schemas and jobs
def test_chat_and_completion_answers_still_conform(app):
    chat = post(
        app, "/v1/chat/completions", {"model": "tiny", "messages": MESSAGES, "max_tokens": 2}
    )
    assert chat.status_code == 200
    assert errors("CreateChatCompletionResponse", chat.json()) == []


def test_a_runpod_job_can_wrap_the_responses_api(app):
    job = {"openai_route": "/v1/responses", "openai_input": {"input": "Hi", "max_output_tokens": 3}}
    response = post(app, f"/v2/{ENDPOINT}/runsync", {"input": job})
    result = response.json()
    assert result["status"] == "COMPLETED", result
    (output,) = result["output"]
    assert output["object"] == "response" and output["usage"]["output_tokens"] == 3
    validate("Response", output)
    stream = {**job, "openai_input": {**job["openai_input"], "stream": True}}
    result = post(app, f"/v2/{ENDPOINT}/runsync", {"input": stream}).json()
    assert result["status"] == "COMPLETED", result
    raw = "".join(result["output"])
    assert "event: response.completed" in raw  # raw SSE text, `event:` lines kept
