"""The same image as a classic RunPod serverless worker: one engine in this process, no Ray.

    python -m serve_app.runpod_worker                      # on RunPod serverless
    python -m serve_app.runpod_worker --rp_serve_api \\
        --rp_api_host 127.0.0.1 --rp_api_port 8000         # runpod's local test API

Jobs take the same path as in the Ray Serve application (jobs/runner.py through the model's
API, http/model_api.py): worker-vllm's inputs and outputs, `openai_route` for every OpenAI-shaped
route the model serves, streamed with `return_aggregate_stream`, and at most MAX_CONCURRENCY
jobs at once (runpod's `concurrency_modifier`).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

from serve_app.config.errors import ConfigError
from serve_app.config.plan import ModelDeployment, build_plan
from serve_app.deployments import engine_reaper
from serve_app.engine import args as vllm_args
from serve_app.engine import vllm_engine
from serve_app.engine.protocol import Engine
from serve_app.http.admission import GenerationSlots
from serve_app.http.model_api import ModelApi
from serve_app.jobs.runner import JobRunner
from serve_app.jobs.translate import JobFailed, JobStarted, ReplicaBusy
from serve_app.logs import get_logger

logger = get_logger(__name__)


class Worker:
    """runpod's handler and concurrency modifier around one engine, started on first use."""

    def __init__(self, model: ModelDeployment):
        self.model = model
        self.engine: Engine | None = None
        self._runner: JobRunner | None = None
        self._starting: asyncio.Lock | None = None

    async def runner(self) -> JobRunner:
        if self._runner is None:
            self._starting = self._starting or asyncio.Lock()
            async with self._starting:
                if self._runner is None:
                    self.engine = await vllm_engine.start(self.model)
                    vllm_engine.freeze_startup_heap()
                    serve = self.model.serve
                    slots = GenerationSlots(serve.max_concurrency, serve.max_queued_requests)
                    api = ModelApi(self.engine.app, slots, serve.max_n)
                    name = self.model.served_model_names[0]
                    self._runner = JobRunner(api, slots, name, self.model.jobs, "worker")
        return self._runner

    async def handler(self, job: dict[str, Any]) -> AsyncIterator[Any]:
        runner = await self.runner()
        async for item in runner.run(job.get("input")):
            if isinstance(item, JobFailed):
                # runpod turns an output's "error" into a FAILED job with that message
                yield {"error": item.error}
                return
            if isinstance(item, ReplicaBusy):  # more jobs than MAX_CONCURRENCY + queue
                yield {"error": "This worker is at capacity (MAX_QUEUED_REQUESTS); retry"}
                return
            if not isinstance(item, JobStarted):
                yield item

    def concurrency(self, current: int) -> int:
        return self.model.serve.max_concurrency


def main() -> None:
    try:
        plan = build_plan(os.environ, engine_args=vllm_args)
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        sys.exit(2)
    if len(plan.models) != 1:
        print("The serverless worker serves one model (MODEL_NAME)", file=sys.stderr)
        sys.exit(2)
    import runpod

    engine_reaper.start()  # the engine's processes must not outlive this worker
    worker = Worker(plan.models[0])
    runpod.serverless.start(
        {
            "handler": worker.handler,
            "concurrency_modifier": worker.concurrency,
            "return_aggregate_stream": True,
        }
    )


if __name__ == "__main__":
    main()
