"""Several models behind the router ingress, of two kinds: a chat model (tiny-a) and an
embedding model (tiny-embed: vLLM's pooling runner, chosen from the architecture of a tiny
random-weight model made at test time; the app: conftest.py). Each request of every API goes
to the deployment of its `model`: Responses, Anthropic messages, tokenize, embeddings (the
openai SDK: float, base64, several inputs, dimensions), the pooling routes, and RunPod jobs
wrapping them. Real engines on CPU, real clients."""

from __future__ import annotations

import base64
import struct

import anthropic
import httpx
import openai
import pytest

from tests.contracts import validate

pytestmark = pytest.mark.e2e

MESSAGES = [{"role": "user", "content": "Hello world! How are you today?"}]
HIDDEN = 128  # the tiny models' hidden size: an embedding's length


@pytest.fixture(scope="module")
def client(app) -> openai.OpenAI:
    return app.openai()


def test_both_kinds_are_listed(client):
    assert {"tiny-a", "tiny-embed"} <= {m.id for m in client.models.list()}


def test_embeddings_with_the_openai_sdk(client, app):
    inputs = ["The capital of France", "Ray Serve", "vLLM"]
    floats = client.embeddings.create(model="tiny-embed", input=inputs, encoding_format="float")
    assert [len(d.embedding) for d in floats.data] == [HIDDEN] * 3
    assert floats.usage.prompt_tokens > 0
    packed = client.embeddings.create(model="tiny-embed", input=inputs, encoding_format="base64")
    for encoded, plain in zip(packed.data, floats.data, strict=True):
        vector = struct.unpack(f"<{HIDDEN}f", base64.b64decode(encoded.embedding))
        assert list(vector) == pytest.approx(plain.embedding, abs=1e-5)
    default = client.embeddings.create(model="tiny-embed", input="vLLM")  # the SDK's base64
    assert default.data[0].embedding == pytest.approx(floats.data[2].embedding, abs=1e-5)
    short = client.embeddings.create(model="tiny-embed", input=inputs, dimensions=32)
    assert [len(d.embedding) for d in short.data] == [32] * 3
    raw = httpx.post(
        app.base_url + "/v1/embeddings", json={"model": "tiny-embed", "input": inputs}, timeout=60
    )
    validate("CreateEmbeddingResponse", raw.json())  # floats: the schema has no base64 form


def test_responses_and_messages_go_to_the_chat_model(client, app):
    reply = client.responses.create(model="tiny-a", input="Hello", max_output_tokens=4)
    assert reply.model == "tiny-a" and reply.usage.output_tokens == 4
    claude = anthropic.Anthropic(base_url=app.base_url, api_key="unused", max_retries=0)
    message = claude.messages.create(model="tiny-a", max_tokens=4, messages=MESSAGES)
    assert message.usage.output_tokens <= 4


def test_each_model_answers_only_its_kinds_apis(client):
    with pytest.raises(openai.NotFoundError, match="Unknown route"):
        client.embeddings.create(model="tiny-a", input="x")
    with pytest.raises(openai.NotFoundError, match="Unknown route"):
        client.responses.create(model="tiny-embed", input="x", max_output_tokens=2)
    with pytest.raises(openai.NotFoundError, match="gpt-4"):
        client.embeddings.create(model="gpt-4", input="x")


def test_pooling_routes_of_the_embedding_model(app):
    for path, body in (
        ("/pooling", {"model": "tiny-embed", "input": "Hello"}),
        ("/v1/score", {"model": "tiny-embed", "queries": "Paris", "documents": ["France"]}),
        ("/rerank", {"model": "tiny-embed", "query": "Paris", "documents": ["France", "x"]}),
    ):
        response = httpx.post(app.base_url + path, json=body, timeout=60)
        assert response.status_code == 200, (path, response.text)
    rerank = response.json()
    assert sorted(r["index"] for r in rerank["results"]) == [0, 1]


def test_routes_that_read_a_tokenizer_must_name_the_model(app):
    response = httpx.post(app.base_url + "/tokenize", json={"prompt": "Hello"}, timeout=60)
    assert response.status_code == 400 and "`model` is required" in response.text
    for model in ("tiny-a", "tiny-embed"):
        tokens = httpx.post(
            app.base_url + "/tokenize", json={"model": model, "prompt": "Hello"}, timeout=60
        )
        assert tokens.json()["count"] > 0


def test_runpod_jobs_wrap_embeddings_and_responses_by_model(app):
    url = app.base_url + "/v2/jobs/runsync"
    embed = {
        "openai_route": "/v1/embeddings",
        "openai_input": {"model": "tiny-embed", "input": "x"},
    }
    result = httpx.post(url, json={"input": embed}, timeout=120).json()
    assert result["status"] == "COMPLETED", result
    assert len(result["output"][0]["data"][0]["embedding"]) == HIDDEN
    respond = {
        "openai_route": "/v1/responses",
        "openai_input": {"model": "tiny-a", "input": "Hi", "max_output_tokens": 3},
    }
    result = httpx.post(url, json={"input": respond}, timeout=120).json()
    assert result["status"] == "COMPLETED", result
    assert result["output"][0]["model"] == "tiny-a"
