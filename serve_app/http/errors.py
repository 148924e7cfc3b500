"""Every error this application answers, in the shape of the protocol the client speaks.

* OpenAI (`/v1/...` and the same under `/openai/v1/...`, `/v2/<endpoint_id>/openai/v1/...`, and
  vLLM's own routes such as `/tokenize`): `{"error": {"message", "type", "param", "code"}}`,
  `code` a string or null as OpenAI's schema says (vLLM puts the integer HTTP status there).
* Anthropic (`/v1/messages...`): `{"type": "error", "error": {"type", "message"}}`.
* RunPod's job API (`/v2/<endpoint_id>/run`, `status`, ...): `{"error": "<message>"}`.

No vLLM import: the ingress, the HTTP layer and the engine adapter all use it.
"""

from __future__ import annotations

import json
import re
from http import HTTPStatus
from typing import Any, Literal

Protocol = Literal["openai", "anthropic", "runpod"]

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
# Anthropic's error types by status (its API answers overload with 529; we keep 503).
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}

# `/openai/v1/...` and `/v2/<endpoint_id>/openai/v1/...` serve what `/v1/...` serves.
_OPENAI_PREFIX = re.compile(r"^(?:/openai|/v2/(?P<endpoint>[^/]+)/openai)(?=/v1(?:/|$))")


def split_openai_prefix(path: str) -> tuple[str, str | None] | None:
    """For a path under one of RunPod's OpenAI base URLs: (the `/v1/...` path, endpoint id or
    None); for any other path, None."""
    match = _OPENAI_PREFIX.match(path)
    if match is None:
        return None
    return path[match.end() :], match.group("endpoint")


def protocol_of(path: str) -> Protocol:
    """Which protocol's error shape a path answers in."""
    split = split_openai_prefix(path)
    inner = split[0] if split else path
    if inner.startswith("/v1/messages"):
        return "anthropic"
    if split is None and path.startswith("/v2/") and path.count("/") >= 3:
        return "runpod"  # /v2/<endpoint_id>/<operation>; /v2/embed and /v2/rerank are vLLM's
    return "openai"


def error_dict(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    type_: str | None = None,
) -> dict[str, Any]:
    """OpenAI's error shape."""
    return {
        "error": {
            "message": message,
            "type": type_ or _TYPES.get(status, "server_error"),
            "param": param,
            "code": code if code is not None else _CODES.get(status),
        }
    }


def anthropic_error_dict(status: int, message: str) -> dict[str, Any]:
    """Anthropic's error shape."""
    return {
        "type": "error",
        "error": {"type": _ANTHROPIC_TYPES.get(status, "api_error"), "message": message},
    }


def error_for(protocol: Protocol, status: int, message: str, **kwargs: Any) -> dict[str, Any]:
    if protocol == "anthropic":
        return anthropic_error_dict(status, message)
    if protocol == "runpod":
        return {"error": message}
    return error_dict(status, message, **kwargs)


def http_error_message(status: int, detail: Any, method: str, path: str) -> str:
    """What a framework's HTTP error (unknown route, wrong method, ...) says to the client."""
    if status == 404:
        return f"Unknown route: {method} {path}"
    if status == 405:
        return f"Method {method} is not allowed on {path}"
    return str(detail)


def normalize_error(payload: dict[str, Any], status: int | None = None) -> tuple[int, dict]:
    """(status, OpenAI-shaped error) from a vLLM ErrorResponse dict (integer `code`), an
    OpenAI-shaped one, or an Anthropic-shaped one."""
    error = payload.get("error", payload)
    if not isinstance(error, dict):  # e.g. {"error": "text"}
        error = {"message": str(error)}
    raw_code = error.get("code")
    if status is None:
        status = raw_code if isinstance(raw_code, int) else 500
    message = str(error.get("message") or error.get("detail") or HTTPStatus(status).phrase)
    param = error.get("param")
    param = param if isinstance(param, str) or param is None else str(param)
    code = raw_code if isinstance(raw_code, str) else None
    if status == 404 and param == "model":
        code = "model_not_found"
    elif param == "input_tokens" or "maximum context length" in message:
        code = "context_length_exceeded"
    return status, error_dict(status, message, param=param, code=code)


def reshape(protocol: Protocol, status: int | None, payload: Any) -> dict[str, Any]:
    """An error body of any of the shapes above (or vLLM's) in `protocol`'s shape; `status`
    None: the one vLLM's body names."""
    if not isinstance(payload, dict):
        payload = {"message": str(payload)}
    status, error = normalize_error(payload, status)
    if protocol == "openai":
        return error
    return error_for(protocol, status, error["error"]["message"])


def sse_error(path: str, status: int, message: str) -> str:
    """The last event of a stream that fails midway, as the path's protocol ends one:
    Anthropic's `error` event, the Responses API's `error` event, or OpenAI's error data
    followed by `[DONE]`."""
    split = split_openai_prefix(path)
    inner = split[0] if split else path
    if protocol_of(path) == "anthropic":
        return f"event: error\ndata: {json.dumps(anthropic_error_dict(status, message))}\n\n"
    error = error_dict(status, message)["error"]
    if inner.startswith("/v1/responses"):
        event = {"type": "error", "code": error["code"], "message": message, "param": None}
        return f"event: error\ndata: {json.dumps(event)}\n\n"
    return f"data: {json.dumps({'error': error})}\n\ndata: [DONE]\n\n"
