"""The LLM deployment: each replica owns one vLLM engine (serve_app/engine.py).

The deployment class is the engine class itself (no delegation on the token path), started
by Serve's async constructor. Serve calls `check_health` periodically: a dead engine makes the
replica unhealthy and Serve replaces it. A sidecar (engine_reaper) makes sure the engine's
processes die with the replica, however it ends.
"""

from __future__ import annotations

from . import engine_reaper
from .config.plan import ModelDeployment
from .engine import LLMEngine


class LLMServer(LLMEngine):
    async def __init__(self, model: ModelDeployment):  # type: ignore[misc]
        self._engine = None
        # First, so engine processes never outlive this replica, even if it is killed.
        self._reaper = engine_reaper.start()
        super().__init__(model, *await self.boot(model))

    async def ready(self) -> bool:
        """Answers once the replica runs: the ingress's probe while none does."""
        return True

    def __del__(self) -> None:
        self.shutdown()
