"""Runtime LoRA adapters on every replica of a deployment, not only the one a request hit.

With VLLM_ALLOW_RUNTIME_LORA_UPDATING on, vLLM serves `/v1/load_lora_adapter` and
`/v1/unload_lora_adapter`, which change the engine of the process they reach. Behind a load
balancer that is one replica of several. So each LLM replica records the adapters loaded or
unloaded through it in a registry shared by the deployment (`AdapterRegistry`), and every
replica brings its engine in line with the registry: when it starts (before it takes traffic,
so replicas added by autoscaling serve the adapters too), before it handles a load or unload
itself, and every LORA_SYNC_INTERVAL_S. `/v1/models` on any replica then lists them, and the
router ingress routes their names to the deployment.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from serve_app.http import asgi
from serve_app.http.asgi import ASGIApp, Message, Receive, Scope, Send
from serve_app.http.model_api import read_body, replay
from serve_app.logs import get_logger

logger = get_logger(__name__)

LOAD_PATH = "/v1/load_lora_adapter"
UNLOAD_PATH = "/v1/unload_lora_adapter"
LORA_SYNC_INTERVAL_S = 2.0
NAMESPACE = "ray-vllm-worker"


class AdapterRegistry:
    """The adapters loaded at run time into a deployment: name -> path, in Ray's GCS key-value
    store (Ray's only cluster-lifetime store that needs no process of ours to stay alive; Serve
    keeps its own checkpoints there). One key per adapter, so concurrent loads never race.
    Blocking calls: run them in a thread."""

    def __init__(self, app: str, deployment: str):
        self.prefix = f"lora/{app}/{deployment}/"

    def put(self, name: str, path: str) -> None:
        from ray.experimental.internal_kv import _internal_kv_put

        _internal_kv_put(self.prefix + name, path, namespace=NAMESPACE)

    def delete(self, name: str) -> None:
        from ray.experimental.internal_kv import _internal_kv_del

        _internal_kv_del(self.prefix + name, namespace=NAMESPACE)

    def all(self) -> dict[str, str]:
        return _read_prefix(self.prefix)

    @staticmethod
    def by_deployment(app: str) -> dict[str, str]:
        """Every runtime adapter of the application: name -> deployment."""
        return {
            key.split("/", 1)[1]: key.split("/", 1)[0]
            for key in _read_prefix(f"lora/{app}/")
            if "/" in key
        }


def _read_prefix(prefix: str) -> dict[str, str]:
    from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_list

    found = {}
    for key in _internal_kv_list(prefix, namespace=NAMESPACE):
        value = _internal_kv_get(key, namespace=NAMESPACE)
        if value is not None:
            found[key.decode()[len(prefix) :]] = value.decode()
    return found


class LoraSync:
    """An ASGI layer over a replica's model API that records runtime LoRA changes made through
    it, and brings the engine in line with the registry (`sync`)."""

    def __init__(self, api: ASGIApp, registry: AdapterRegistry):
        self.api = api
        self.registry = registry
        self.loaded: dict[str, str] = {}  # runtime adapters this replica's engine holds
        self.failed: set[tuple[str, str]] = set()  # (name, path) refused here, logged once
        self._lock = asyncio.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path")
        if scope["type"] != "http" or path not in (LOAD_PATH, UNLOAD_PATH):
            await self.api(scope, receive, send)
            return
        body = await read_body(receive)
        if body is None:
            return  # the client went away
        try:
            payload = json.loads(body)
            name = payload.get("lora_name") if isinstance(payload, dict) else None
        except (ValueError, RecursionError):
            payload, name = None, None
        answer: list[Message] = []  # sent once the change is recorded

        async def held(message: Message) -> None:
            answer.append(message)

        async with self._lock:
            await self._sync()
            await self.api(scope, replay(body, receive), held)
            status = answer[0]["status"] if answer else 0
            if status == 200 and isinstance(name, str):
                await self._record(path, name, str(payload.get("lora_path")))
        for message in answer:
            await send(message)

    async def _record(self, path: str, name: str, lora_path: str) -> None:
        if path == LOAD_PATH:
            self.loaded[name] = lora_path
            await asyncio.to_thread(self.registry.put, name, lora_path)
            logger.info("LoRA adapter %r loaded; every replica will load it", name)
        else:
            self.loaded.pop(name, None)
            await asyncio.to_thread(self.registry.delete, name)
            logger.info("LoRA adapter %r unloaded; every replica will unload it", name)

    async def sync(self) -> None:
        async with self._lock:
            await self._sync()

    async def _sync(self) -> None:
        wanted = await asyncio.to_thread(self.registry.all)
        for name, path in wanted.items():
            if self.loaded.get(name) != path:
                # a new path for a name this engine holds replaces its weights in place
                body = {"lora_name": name, "lora_path": path, "load_inplace": name in self.loaded}
                await self._change(LOAD_PATH, body, path)
        for name in [n for n in self.loaded if n not in wanted]:
            await self._change(UNLOAD_PATH, {"lora_name": name}, None)

    async def _change(self, path: str, body: dict[str, Any], loaded: str | None) -> None:
        request = asgi.HttpRequest.json(path, json.dumps(body).encode())
        start, answer = await asgi.read(self.api, request, **{asgi.ADMITTED: True})
        name = body["lora_name"]
        # vLLM refuses a name it holds already: loaded at start-up (LORA_MODULES) or by a
        # request here before the registry had it; not one this sync loaded (that is in place).
        already = b"already been loaded" in answer and name not in self.loaded
        if start.status == 200 or (loaded is not None and already):
            if loaded is None:
                self.loaded.pop(name, None)
            else:
                self.loaded[name] = loaded
            self.failed.discard((name, loaded or ""))
            logger.info("LoRA adapter %r %s (registry)", name, "loaded" if loaded else "unloaded")
            return
        if loaded is None:
            self.loaded.pop(name, None)
        if (name, loaded or "") not in self.failed:  # retried every sync, logged once
            self.failed.add((name, loaded or ""))
            logger.warning(
                "LoRA adapter %r could not be %s here (retried every %g s): %s",
                name,
                "loaded" if loaded else "unloaded",
                LORA_SYNC_INTERVAL_S,
                answer[:300].decode(errors="replace"),
            )

    async def run(self, interval_s: float = LORA_SYNC_INTERVAL_S) -> None:
        """Keep in line with the registry until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.sync()
            except Exception as exc:  # the GCS restarting: try again next time
                logger.warning("LoRA adapters not synced: %s", exc)
