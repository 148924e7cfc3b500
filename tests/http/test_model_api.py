"""The model API's guarantees (serve_app/http/model_api.py) and the in-process ASGI call
(serve_app/http/asgi.py), against a fake engine: generation slots and 503s, every protocol's error
shape, OpenAI's schemas, left-out routes, streams passed through and cancelled. Milliseconds,
no Ray, no vLLM; the same behaviour on the real engine is in test_vllm_api.py."""

from __future__ import annotations

import asyncio
import contextlib
import json

import httpx
import pytest

from serve_app.http import asgi
from serve_app.http.admission import GenerationSlots
from serve_app.http.model_api import ModelApi, route_for
from tests.conftest import reached
from tests.contracts import validate
from tests.fake_engine import FakeEngine


def model_api(engine: FakeEngine, concurrency: int = 4, queue: int = 4) -> ModelApi:
    return ModelApi(engine.app, GenerationSlots(concurrency, queue))


async def post(api: ModelApi, path: str, body: object, **kwargs) -> httpx.Response:
    transport = httpx.ASGITransport(app=api)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.post(path, json=body, **kwargs)


def run(coroutine):
    return asyncio.run(coroutine)


def test_json_answers_conform_to_openais_schema():
    response = run(post(model_api(FakeEngine()), "/v1/completions", {"max_tokens": 2}))
    assert response.status_code == 200
    body = response.json()
    validate("CreateCompletionResponse", body)
    assert "system_fingerprint" not in body and "logprobs" in body["choices"][0]  # null allowed
    assert int(response.headers["content-length"]) == len(response.content)


def test_vllm_errors_get_openais_shape_with_a_string_code():
    response = run(post(model_api(FakeEngine()), "/v1/completions", {"model": "nope"}))
    assert response.status_code == 404
    error = response.json()["error"]
    validate("ErrorResponse", response.json())
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert error["type"] == "invalid_request_error"


def test_anthropic_routes_answer_errors_in_anthropics_shape():
    api = model_api(FakeEngine())
    response = run(post(api, "/v1/messages", {"model": "fake"}))
    assert response.status_code == 400
    assert response.json() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "max_tokens"},
    }


def test_unknown_roles_are_refused_before_the_engine_sees_them():
    body = {"model": "fake", "messages": [{"role": "wizard", "content": "hi"}]}
    response = run(post(model_api(FakeEngine()), "/v1/chat/completions", body))
    assert response.status_code == 400
    assert "'wizard' is not a valid role" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    "path, body",
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "n": 5000}),
        ("/v1/completions", {"prompt": "hi", "n": 129}),
        ("/v1/completions", {"prompt": "hi", "n": 1000, "extra": {"n": 1}}),
        ("/v1/completions", {"prompt": "hi", "n": 1000.0}),  # vLLM coerces both to 1000
        ("/v1/completions", {"prompt": "hi", "n": "1000"}),
    ],
)
def test_more_choices_than_max_n_are_refused_before_the_engine(path, body):
    engine = FakeEngine()
    response = run(post(model_api(engine), path, {"model": "fake", **body}))
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "n" and "MAX_N" in error["message"]
    assert engine.unfinished_requests() == 0


def test_n_within_max_n_and_n_elsewhere_in_the_body_pass():
    api = model_api(FakeEngine())
    nested = {"prompt": "hi", "n": 2, "response_format": {"schema": {"n": 5000}}}
    for body in (nested, {"prompt": 'say "n": 9999', "n": 128}):
        assert run(post(api, "/v1/completions", {"model": "fake", **body})).status_code == 200


def test_left_out_routes_say_why():
    transport = httpx.ASGITransport(app=model_api(FakeEngine()))

    async def get() -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/metrics")

    response = run(get())
    assert response.status_code == 404
    assert "Ray's metrics endpoint" in response.json()["error"]["message"]


def test_generating_routes_wait_for_a_slot_and_are_refused_past_the_line():
    """One slot, no waiting line: a second generation on any protocol gets 503 + Retry-After
    in its own shape while the first streams; tokenize does not need a slot."""

    async def scenario():
        engine = FakeEngine(token_delay_s=0.01)
        api = model_api(engine, concurrency=1, queue=0)
        stream = asgi.call(
            api, asgi.HttpRequest.json("/v1/completions", b'{"stream": true, "max_tokens": 500}')
        )
        start = await anext(stream)
        assert start.status == 200 and start.is_stream
        await anext(stream)
        busy = await post(api, "/v1/completions", {"max_tokens": 1})
        assert busy.status_code == 503 and busy.headers["retry-after"] == "5"
        assert "MAX_CONCURRENCY" in busy.json()["error"]["message"]
        busy = await post(api, "/v1/messages", {"max_tokens": 1})
        assert busy.status_code == 503
        assert busy.json()["error"]["type"] == "overloaded_error"
        assert (await post(api, "/tokenize", {"prompt": "abc"})).status_code == 200
        await stream.aclose()  # the client goes away: the generation ends, the slot frees
        await reached(lambda: engine.unfinished == 0 and api.slots.running == 0)
        assert (await post(api, "/v1/completions", {"max_tokens": 1})).status_code == 200

    run(scenario())


def test_a_client_that_leaves_while_waiting_for_a_slot_leaves_the_line():
    """With the slot taken, a second request waits in line; its client goes away: it leaves
    the line at once (no ghost keeps a place a live client needs), and never runs."""

    async def scenario():
        engine = FakeEngine(token_delay_s=0.01)
        api = model_api(engine, concurrency=1, queue=1)
        stream = asgi.call(
            api, asgi.HttpRequest.json("/v1/completions", b'{"stream": true, "max_tokens": 1000}')
        )
        await anext(stream)
        gone = asyncio.Event()  # the waiting request's client, until it disconnects
        body_sent = False

        async def receive():
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": b'{"max_tokens": 1}', "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        sent: list[dict] = []

        async def send(message):
            sent.append(message)

        scope = asgi.HttpRequest.json("/v1/completions", b"").scope()
        leaving = asyncio.create_task(api(scope, receive, send))
        await reached(lambda: api.slots.waiting == 1)
        gone.set()
        await asyncio.wait_for(leaving, 5)
        assert api.slots.waiting == 0 and api.slots.running == 1 and sent == []
        await stream.aclose()

    run(scenario())


def test_in_stream_error_events_keep_vllms_status():
    """vLLM's in-stream errors carry their status in `code`: a client's mistake stays one."""
    from serve_app.http.model_api import _conform_error_events

    chunk = b'data: {"error": {"message": "bad", "type": "BadRequestError", "code": 400}}\n\n'
    event = json.loads(_conform_error_events(chunk).split(b"\n\n")[0].removeprefix(b"data: "))
    assert event["error"]["type"] == "invalid_request_error" and event["error"]["code"] is None


def test_in_stream_error_events_get_openais_shape():
    async def scenario():
        api = model_api(FakeEngine())
        request = asgi.HttpRequest.json(
            "/v1/completions", b'{"stream": true, "max_tokens": 2, "fail": true}'
        )
        start, body = await asgi.read(api, request)
        assert start.status == 200 and start.is_stream
        return body

    body = run(scenario())
    events = [e.removeprefix(b"data: ") for e in body.split(b"\n\n") if e]
    assert events[-1] == b"[DONE]"
    error = json.loads(events[-2])
    validate("ErrorResponse", error)
    assert error["error"]["code"] is None and error["error"]["type"] == "server_error"


def test_a_call_coalesces_chunks_produced_while_the_caller_was_busy():
    """Nothing waits to fill a batch; chunks only join while the consumer is busy."""

    async def scenario():
        api = model_api(FakeEngine())
        request = asgi.HttpRequest.json("/v1/completions", b'{"stream": true, "max_tokens": 20}')
        answer = asgi.call(api, request)
        await anext(answer)  # the head
        await asyncio.sleep(0.05)  # busy: the whole stream is produced meanwhile
        chunks = [chunk async for chunk in answer]
        return chunks

    chunks = run(scenario())
    assert len(chunks) == 1 and chunks[0].count(b"data: ") == 21


def test_an_abandoned_request_ends_in_the_engine_before_and_after_its_answer_starts():
    """A caller that goes away (a cancelled job, a router client gone) ends the request: a
    stream by cancelling it, an answer not started yet by the disconnect vLLM's routes wait
    for (cancelling alone would leave their handler task running)."""

    async def abandon(body: bytes, streaming: bool) -> None:
        engine = FakeEngine(token_delay_s=0.01)
        answer = asgi.call(model_api(engine), asgi.HttpRequest.json("/v1/completions", body))
        if streaming:
            await anext(answer)  # the head: tokens flow
        else:
            waiting = asyncio.create_task(anext(answer))  # no head until the answer is whole
        await reached(lambda: engine.unfinished == 1)
        if not streaming:
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiting
        await answer.aclose()
        await reached(lambda: engine.unfinished == 0)

    run(abandon(b'{"stream": true, "max_tokens": 100000}', streaming=True))
    run(abandon(b'{"slow": 3600}', streaming=False))


def test_a_job_that_holds_a_slot_already_is_not_admitted_twice():
    async def scenario():
        api = model_api(FakeEngine(), concurrency=1, queue=0)
        async with api.slots.slot():
            request = asgi.HttpRequest.json("/v1/completions", b'{"max_tokens": 1}')
            start, _ = await asgi.read(api, request, **{asgi.ADMITTED: True})
            return start.status

    assert run(scenario()) == 200


@pytest.mark.parametrize(
    ("path", "generates", "schema"),
    [
        ("/v1/chat/completions", True, "CreateChatCompletionResponse"),
        ("/v1/responses", True, "Response"),
        ("/v1/responses/resp_1", False, "Response"),
        ("/v1/responses/resp_1/cancel", False, "Response"),
        ("/v1/responses/render", False, None),  # not a Response
        ("/v1/embeddings", True, "CreateEmbeddingResponse"),
        ("/v1/messages", True, None),
        ("/v1/messages/count_tokens", False, None),
        ("/tokenize", False, None),
        ("/rerank", True, None),
    ],
)
def test_route_table(path, generates, schema):
    route = route_for(path)
    assert (route.generates, route.schema) == (generates, schema)
