"""RunPod job inputs, their translation to OpenAI requests, and output batching (pure logic)."""

from __future__ import annotations

import asyncio
import itertools
import json

import pytest

from serve_app.config.plan import StreamingBatchSizes
from serve_app.jobs import translate
from serve_app.jobs.inputs import parse_job_input, request_limits

DEFAULTS = StreamingBatchSizes(max_batch_size=50, min_batch_size=1, growth_factor=3)


def sizes(**job) -> list[int]:
    return list(itertools.islice(translate.batch_sizes(parse_job_input(job), DEFAULTS), 8))


def test_batch_sizes_grow_as_worker_vllm_documents():
    assert sizes(prompt="x") == [1, 3, 9, 27, 50, 50, 50, 50]


def test_batch_sizes_per_request_overrides_win():
    assert sizes(prompt="x", min_batch_size=2, batch_size_growth_factor=2, max_batch_size=8) == [
        2, 4, 8, 8, 8, 8, 8, 8,
    ]  # fmt: skip
    assert sizes(prompt="x", max_batch_size=5) == [1, 3, 5, 5, 5, 5, 5, 5]


@pytest.mark.parametrize(
    ("job", "message"),
    [
        ({"prompt": 123}, "input.prompt: Input should be a valid string"),
        ({"prompt": "x", "sampling_params": {"temprature": 0}}, "unknown sampling parameter"),
        ({"prompt": "x", "messages": [{"role": "user", "content": "y"}]}, "not both"),
        ({}, "give prompt or messages"),
        ({"messages": []}, "messages is empty"),
        ({"prompt": "x", "stream": "sometimes"}, "input.stream"),
        ({"prompt": "x", "sampling_params": {"max_tokens": "many"}}, "sampling_params.max_tokens"),
        ({"prompt": "x", "sampling_params": {"n": 2, "best_of": 4}}, "best_of is not supported"),
        ({"openai_route": "/v1/chat/completions"}, "needs openai_input"),
        ({"openai_route": "/v1/files", "openai_input": {}}, "input.openai_route"),
    ],
)
def test_bad_inputs_name_the_problem(job, message):
    with pytest.raises(ValueError, match=message):
        parse_job_input(job)


def test_input_must_be_an_object():
    with pytest.raises(ValueError, match="input must be a JSON object, got str"):
        parse_job_input("hello")


def test_prompt_becomes_a_completion_and_messages_a_chat():
    route, body = translate.openai_request(parse_job_input({"prompt": "Hi"}), "m")
    assert (route, body) == ("completions", {"model": "m", "max_tokens": 16, "prompt": "Hi"})

    messages = [{"role": "user", "content": "Hi"}]
    job = parse_job_input(
        {"messages": messages, "stream": True, "sampling_params": {"temperature": 0, "top_k": 3}}
    )
    route, body = translate.openai_request(job, "m")
    assert route == "chat"
    assert body["messages"] == messages
    assert (body["temperature"], body["top_k"], body["max_tokens"]) == (0, 3, 16)
    assert body["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}

    route, body = translate.openai_request(
        parse_job_input({"prompt": "Hi", "apply_chat_template": True}), "m"
    )
    assert (route, body["messages"]) == ("chat", [{"role": "user", "content": "Hi"}])


def sse(*events: dict, ensure_ascii: bool = True) -> list[str]:
    chunks = [f"data: {json.dumps(e, ensure_ascii=ensure_ascii)}\n\n" for e in events]
    return [*chunks, "data: [DONE]\n\n"]


async def collect(agen) -> list:
    return [item async for item in agen]


def grow(*first: int):
    """Batch sizes: `first`, then the last one forever (as batch_sizes does)."""
    return itertools.chain(first, itertools.repeat(first[-1]))


async def aiter_of(items):
    for item in items:
        yield item


def completion_chunk(index: int, text: str, done: int) -> dict:
    return {
        "choices": [{"index": index, "text": text}],
        "usage": {"prompt_tokens": 4, "completion_tokens": done},
    }


def test_stream_items_batch_tokens_across_choices_and_carry_usage():
    # two choices, three tokens each, interleaved as vLLM streams them
    events = [completion_chunk(i % 2, f"t{i}", i + 1) for i in range(6)]
    items = asyncio.run(
        collect(translate.stream_items(aiter_of(sse(*events)), "completions", grow(1, 3, 9), n=2))
    )
    assert [sum(len(c["tokens"]) for c in item["choices"]) for item in items] == [1, 3, 2]
    assert items[0]["choices"] == [{"tokens": ["t0"]}, {"tokens": []}]  # always all n choices
    assert items[1]["choices"] == [{"tokens": ["t2"]}, {"tokens": ["t1", "t3"]}]
    assert items[-1]["usage"] == {"input": 4, "output": 6}


def test_a_token_without_text_of_its_own_counts_as_worker_vllm_counted_it():
    """vLLM sends no chunk for a token that ends inside a character; the next chunk's usage
    counts it: it gets an empty string, and the batches hold tokens, not chunks."""
    events = [completion_chunk(0, "ab", 1), completion_chunk(0, "é", 3)]
    events += [completion_chunk(0, f"t{i}", i) for i in range(4, 8)]
    items = asyncio.run(
        collect(translate.stream_items(aiter_of(sse(*events)), "completions", grow(1, 3, 9)))
    )
    assert [item["choices"][0]["tokens"] for item in items] == [
        ["ab"],
        ["", "é", "t4"],
        ["t5", "t6", "t7"],
    ]
    assert items[-1]["usage"] == {"input": 4, "output": 7}


def test_text_with_unicode_line_separators_stays_in_its_event():
    """Pydantic leaves U+2028, U+2029 and U+0085 unescaped in JSON: they split no event."""
    events = [completion_chunk(0, "a\u2028b\u2029c\x85d", 1)]
    items = asyncio.run(
        collect(
            translate.stream_items(
                aiter_of(sse(*events, ensure_ascii=False)), "completions", grow(5)
            )
        )
    )
    assert items[0]["choices"][0]["tokens"] == ["a\u2028b\u2029c\x85d"]


def test_chat_stream_items_skip_the_role_announcement():
    events = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {"choices": [{"index": 0, "delta": {"content": "Pa"}}]},
        {
            "choices": [{"index": 0, "delta": {"content": "ris"}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2},
        },
    ]
    items = asyncio.run(collect(translate.stream_items(aiter_of(sse(*events)), "chat", grow(5))))
    assert items == [{"choices": [{"tokens": ["Pa", "ris"]}], "usage": {"input": 3, "output": 2}}]


def test_stream_error_event_fails_the_job():
    error = {"message": "engine died", "type": "server_error", "param": None, "code": None}
    with pytest.raises(translate.OpenAIError, match="engine died"):
        asyncio.run(
            collect(translate.stream_items(aiter_of(sse({"error": error})), "chat", grow(1)))
        )


def test_openai_wrapped_stream_is_batched_raw_or_parsed():
    chunks = sse({"n": 1}, {"n": 2}, {"n": 3})
    raw = asyncio.run(
        collect(translate.openai_stream_items(aiter_of(chunks), grow(1, 3), raw=True))
    )
    assert raw == [chunks[0], "".join(chunks[1:])]  # the last batch ends with [DONE]
    parsed = asyncio.run(
        collect(translate.openai_stream_items(aiter_of(chunks), grow(2), raw=False))
    )
    assert parsed == [[{"n": 1}, {"n": 2}], [{"n": 3}]]


def test_request_limits_from_runpod_policy():
    assert request_limits({"input": {}}) == {}
    assert request_limits({"input": {}, "policy": {"executionTimeout": 1500, "ttl": 60000}}) == {
        "execution_timeout_s": 1.5,
        "ttl_s": 60.0,
    }
    for bad in (
        {"prompt": "x"},
        [],
        {"input": {}, "policy": {"ttl": -1}},
        {"input": {}, "policy": 3},
    ):
        with pytest.raises(ValueError):
            request_limits(bad)
