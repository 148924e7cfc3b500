"""What the rest of the application knows of an engine (no vLLM import).

An engine answers HTTP: `app` is vLLM's own API for it (every router `vllm serve` registers for
the model's tasks, on the state `vllm serve` builds), an ASGI app that the LLM deployment serves
directly, behind this application's guarantees (serve_app/http/model_api.py), and that the router
ingress and the job queue reach through a deployment handle (serve_app/http/asgi.py). Streams
come back as vLLM wrote them, SSE chunks exactly as vLLM produced them, so nothing on the token
path parses them again. Besides HTTP an engine reports its health and its load.
"""

from __future__ import annotations

from typing import Any, Protocol

from serve_app.http.asgi import ASGIApp


class Engine(Protocol):
    """One inference engine and its HTTP API."""

    @property
    def app(self) -> ASGIApp:
        """The engine's HTTP API (vLLM's routers), to be served behind model_api.ModelApi."""
        ...

    @property
    def supported_tasks(self) -> tuple[str, ...]:
        """vLLM's tasks of the model (`generate`, `embed`, `classify`, `score`, ...)."""
        ...

    def openapi(self) -> dict[str, Any]:
        """The OpenAPI description of `app`."""
        ...

    async def check_health(self) -> None:
        """Raises if the engine can no longer serve (its process died)."""
        ...

    def unfinished_requests(self) -> int:
        """Requests the engine is working on (running or waiting in its scheduler)."""
        ...

    def prefix_cache(self) -> dict[str, int]:
        """Prompt tokens looked up in the engine's prefix cache (`queries`) and found (`hits`)
        since it started (both 0 when vLLM's stats are disabled)."""
        ...

    @property
    def kv_cache_tokens(self) -> int:
        """Tokens the engine's KV cache holds (0 if unknown): what request routing may assume
        a replica keeps of the prompts it was sent."""
        ...

    def shutdown(self) -> None:
        """Stop the engine and its processes."""
        ...
