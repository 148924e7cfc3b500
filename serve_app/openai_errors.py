"""OpenAI's error shape: `{"error": {"message", "type", "param", "code"}}`.

Every error of the OpenAI routes is built here. `code` is a string or null, as OpenAI's
schema says (vLLM puts the integer HTTP status there). No vLLM import: the ingress uses it.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}
_CODES = {
    401: "invalid_api_key",
    413: "request_too_large",
    429: "rate_limit_exceeded",
    503: "service_unavailable",
}


def error_dict(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    type_: str | None = None,
) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": type_ or _TYPES.get(status, "server_error"),
            "param": param,
            "code": code if code is not None else _CODES.get(status),
        }
    }


def error_body(status: int, message: str, **kwargs: Any) -> bytes:
    return json.dumps(error_dict(status, message, **kwargs)).encode()


def normalize_error(payload: dict[str, Any], status: int | None = None) -> tuple[int, dict]:
    """(status, OpenAI-shaped error) from a vLLM ErrorResponse dict (integer `code`)."""
    error = payload.get("error", payload)
    raw_code = error.get("code")
    if status is None:
        status = raw_code if isinstance(raw_code, int) else 500
    message = str(error.get("message") or HTTPStatus(status).phrase)
    param = error.get("param")
    code = raw_code if isinstance(raw_code, str) else None
    if status == 404 and param == "model":
        code = "model_not_found"
    elif param == "input_tokens" or "maximum context length" in message:
        code = "context_length_exceeded"
    return status, error_dict(status, message, param=param, code=code)


def sse_error(status: int, message: str, **kwargs: Any) -> str:
    """An error event followed by the end of an SSE stream."""
    return f"data: {json.dumps(error_dict(status, message, **kwargs))}\n\ndata: [DONE]\n\n"
