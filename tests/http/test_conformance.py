"""OpenAI response shapes: nulls vLLM adds where OpenAI's schema forbids them are removed."""

from __future__ import annotations

from serve_app.http import errors as api_errors
from serve_app.http.conformance import conform
from tests.contracts import errors, validate

VLLM_CHAT_RESPONSE = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "hi",
                "refusal": None,
                "annotations": None,
                "audio": None,
                "function_call": None,
                "tool_calls": [],
                "reasoning": None,
            },
            "logprobs": None,
            "finish_reason": "stop",
            "stop_reason": None,
        }
    ],
    "service_tier": None,
    "system_fingerprint": "fp",
    "usage": {
        "prompt_tokens": 1,
        "completion_tokens": 1,
        "total_tokens": 2,
        "prompt_tokens_details": None,
    },
    "prompt_logprobs": None,
    "kv_transfer_params": None,
}


def test_raw_vllm_response_violates_the_schema_and_the_conformed_one_does_not():
    # annotations, function_call, usage.prompt_tokens_details: null where OpenAI forbids it
    assert errors("CreateChatCompletionResponse", VLLM_CHAT_RESPONSE)
    fixed = conform(VLLM_CHAT_RESPONSE, "CreateChatCompletionResponse")
    validate("CreateChatCompletionResponse", fixed)
    message = fixed["choices"][0]["message"]
    assert message["refusal"] is None  # required and nullable: kept
    assert "annotations" not in message and "function_call" not in message
    assert fixed["choices"][0]["logprobs"] is None  # required and nullable: kept
    assert "prompt_tokens_details" not in fixed["usage"]
    assert "kv_transfer_params" not in fixed  # extra field with null: dropped


def test_errors_have_string_codes_and_openai_types():
    status, error = api_errors.normalize_error(
        {
            "error": {
                "message": "The model `x` does not exist.",
                "type": "NotFoundError",
                "param": "model",
                "code": 404,
            }
        }
    )
    assert status == 404
    validate("ErrorResponse", error)
    assert error["error"]["code"] == "model_not_found"
    assert error["error"]["type"] == "invalid_request_error"
    status, error = api_errors.normalize_error(
        {
            "error": {
                "message": "This model's maximum context length is 2048 tokens.",
                "type": "BadRequestError",
                "param": "input_tokens",
                "code": 400,
            }
        }
    )
    assert (status, error["error"]["code"]) == (400, "context_length_exceeded")
