"""Each protocol's error shapes (serve_app/http/errors.py), and how a failed stream ends."""

from __future__ import annotations

import json

from serve_app.http.errors import reshape, sse_error
from tests.contracts import validate


def events(text: str) -> list[tuple[str | None, str]]:
    found = []
    for block in filter(None, text.split("\n\n")):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        found.append((lines.get("event"), lines["data"]))
    return found


def test_a_failed_stream_ends_as_its_protocol_ends_one():
    (event,) = events(sse_error("/v1/messages", 503, "gone"))
    assert event[0] == "error"
    assert json.loads(event[1]) == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "gone"},
    }
    (event,) = events(sse_error("/openai/v1/responses", 500, "boom"))
    assert event[0] == "error" and json.loads(event[1])["type"] == "error"
    first, last = events(sse_error("/v2/ep/openai/v1/chat/completions", 503, "gone"))
    validate("ErrorResponse", json.loads(first[1]))
    assert last == (None, "[DONE]")


def test_vllm_errors_reshaped_keep_their_status_unless_told():
    vllm = {"error": {"message": "no", "type": "BadRequestError", "param": "n", "code": 400}}
    assert reshape("openai", None, vllm)["error"]["type"] == "invalid_request_error"
    assert reshape("openai", 503, vllm)["error"]["type"] == "server_error"
    assert reshape("anthropic", None, vllm) == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "no"},
    }
    assert reshape("runpod", 404, "plain text") == {"error": "plain text"}
