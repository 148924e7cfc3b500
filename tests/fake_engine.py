"""A fake engine for the fast tier: an `engine.protocol.Engine` whose HTTP API is a small FastAPI
app answering a few of vLLM's routes the way vLLM does (shapes, streams, vLLM's error body with
an integer `code`), so the layers above the engine adapter run in milliseconds without vLLM."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse


def vllm_error(status: int, message: str, param: str | None = None) -> JSONResponse:
    """vLLM's ErrorResponse: integer `code`, its own `type`."""
    body = {
        "error": {"message": message, "type": "BadRequestError", "param": param, "code": status}
    }
    return JSONResponse(body, status_code=status)


async def _until_disconnected(request: Request, engine: FakeEngine, seconds: float) -> Any:
    """vLLM's `with_cancellation`: the handler runs in a task that only a disconnect cancels."""

    async def handler() -> dict[str, Any]:
        engine.unfinished += 1
        try:
            await asyncio.sleep(seconds)
            return {"done": True}
        finally:
            engine.unfinished -= 1

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    handler_task = asyncio.create_task(handler())
    listener = asyncio.create_task(disconnected())
    done, pending = await asyncio.wait([handler_task, listener], return_when="FIRST_COMPLETED")
    for task in pending:
        task.cancel()
    return handler_task.result() if handler_task in done else None


class FakeEngine:
    supported_tasks = ("generate",)

    def __init__(self, token_delay_s: float = 0.0):
        self.token_delay_s = token_delay_s
        self.unfinished = 0
        self.adapters: dict[str, str] = {}
        self.app = self._build()

    def _build(self) -> FastAPI:
        app = FastAPI()
        engine = self

        @app.get("/v1/models")
        async def models() -> dict[str, Any]:
            cards = [
                {
                    "id": "fake",
                    "object": "model",
                    "created": 1,
                    "owned_by": "vllm",
                    "root": None,
                    "parent": None,
                    "permission": [],
                }
            ]
            cards += [
                {"id": name, "object": "model", "created": 1, "owned_by": "vllm", "parent": "fake"}
                for name in engine.adapters
            ]
            return {"object": "list", "data": cards}

        @app.post("/v1/completions")
        async def completions(request: Request) -> Any:
            body = await request.json()
            if body.get("model") not in (None, "fake", *engine.adapters):
                return vllm_error(404, f"The model `{body.get('model')}` does not exist.", "model")
            if not isinstance(body.get("max_tokens", 1), int) or body.get("max_tokens", 1) < 0:
                return vllm_error(400, "max_tokens must be at least 0", "max_tokens")
            count = body.get("max_tokens", 3)
            if body.get("slow"):  # as vLLM's routes: the handler in a task of its own
                return await _until_disconnected(request, engine, body["slow"])
            if not body.get("stream"):
                return {
                    "id": "cmpl-1",
                    "object": "text_completion",
                    "created": 1,
                    "model": body.get("model", "fake"),
                    "choices": [
                        {
                            "index": 0,
                            "text": "x" * count,
                            "finish_reason": "length",
                            "logprobs": None,
                            "stop_reason": None,
                        }
                    ],
                    "usage": {
                        "prompt_tokens": 1,
                        "completion_tokens": count,
                        "total_tokens": 1 + count,
                        "prompt_tokens_details": None,
                    },
                    "system_fingerprint": None,
                }

            async def tokens():
                engine.unfinished += 1
                try:
                    for _ in range(count):
                        await asyncio.sleep(engine.token_delay_s)
                        chunk = {
                            "id": "cmpl-1",
                            "object": "text_completion",
                            "created": 1,
                            "model": "fake",
                            "choices": [{"index": 0, "text": "x"}],
                        }
                        yield f"data: {json.dumps(chunk)}\n\n"
                    if body.get("fail"):
                        yield 'data: {"error": {"message": "boom", "type": "x", "code": 500}}\n\n'
                    yield "data: [DONE]\n\n"
                finally:
                    engine.unfinished -= 1

            return StreamingResponse(tokens(), media_type="text/event-stream")

        @app.post("/v1/messages")
        async def messages(request: Request) -> Any:
            body = await request.json()
            if "max_tokens" not in body:
                return JSONResponse(
                    {"type": "error", "error": {"type": "Bad Request", "message": "max_tokens"}},
                    status_code=400,
                )
            return {"id": "msg_1", "type": "message", "role": "assistant", "content": []}

        @app.post("/tokenize")
        async def tokenize(request: Request) -> Any:
            body = await request.json()
            return {"tokens": list(range(len(body.get("prompt", "")))), "count": 0}

        @app.post("/v1/load_lora_adapter")
        async def load(request: Request) -> Any:
            body = await request.json()
            if body["lora_name"] in engine.adapters and not body.get("load_inplace"):
                return vllm_error(
                    400, f"The lora adapter '{body['lora_name']}' has already been loaded."
                )
            if body["lora_path"].startswith("/missing"):
                return vllm_error(404, f"No adapter at {body['lora_path']}")
            engine.adapters[body["lora_name"]] = body["lora_path"]
            return JSONResponse(f"Success: LoRA adapter '{body['lora_name']}' added successfully.")

        @app.post("/v1/unload_lora_adapter")
        async def unload(request: Request) -> Any:
            body = await request.json()
            if engine.adapters.pop(body["lora_name"], None) is None:
                return vllm_error(404, f"The lora adapter '{body['lora_name']}' cannot be found.")
            return JSONResponse(
                f"Success: LoRA adapter '{body['lora_name']}' removed successfully."
            )

        return app

    def openapi(self) -> dict[str, Any]:
        return self.app.openapi()

    async def check_health(self) -> None:
        return None

    def unfinished_requests(self) -> int:
        return self.unfinished

    def prefix_cache(self) -> dict[str, int]:
        return {"queries": 0, "hits": 0}

    @property
    def kv_cache_tokens(self) -> int:
        return 4096

    def shutdown(self) -> None:
        return None
