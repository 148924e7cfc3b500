"""Runtime LoRA adapters shared by the replicas of a deployment (deployments/lora_sync.py), with
fake engines and the registry in a dict: the decisions, in milliseconds. The real thing (two
replicas of the real engine, Ray's key-value store) is in e2e/test_two_replicas.py."""

from __future__ import annotations

import asyncio
import json

from serve_app.deployments.lora_sync import LOAD_PATH, UNLOAD_PATH, AdapterRegistry, LoraSync
from serve_app.http import asgi
from serve_app.http.admission import GenerationSlots
from serve_app.http.model_api import ModelApi
from tests.fake_engine import FakeEngine


class DictRegistry(AdapterRegistry):
    def __init__(self, store: dict[str, str]):
        self.store = store

    def put(self, name: str, path: str) -> None:
        self.store[name] = path

    def delete(self, name: str) -> None:
        self.store.pop(name, None)

    def all(self) -> dict[str, str]:
        return dict(self.store)


def replica(store: dict[str, str]) -> tuple[FakeEngine, LoraSync]:
    engine = FakeEngine()
    return engine, LoraSync(ModelApi(engine.app, GenerationSlots(2, 2)), DictRegistry(store))


async def post(api: LoraSync, path: str, body: dict) -> int:
    start, _ = await asgi.read(api, asgi.HttpRequest.json(path, json.dumps(body).encode()))
    return start.status


def test_an_adapter_loaded_through_one_replica_reaches_the_others_and_new_ones():
    async def scenario():
        store: dict[str, str] = {}
        (engine_a, a), (engine_b, b) = replica(store), replica(store)
        assert await post(a, LOAD_PATH, {"lora_name": "x", "lora_path": "/adapters/x"}) == 200
        assert store == {"x": "/adapters/x"} and engine_a.adapters == {"x": "/adapters/x"}
        await b.sync()
        assert engine_b.adapters == {"x": "/adapters/x"}
        engine_c, c = replica(store)  # a replica that starts later
        await c.sync()
        assert engine_c.adapters == {"x": "/adapters/x"}
        # unloaded through another replica: gone everywhere
        assert await post(c, UNLOAD_PATH, {"lora_name": "x"}) == 200
        await a.sync()
        await b.sync()
        assert store == {} and engine_a.adapters == engine_b.adapters == engine_c.adapters == {}

    asyncio.run(scenario())


def test_a_failed_load_is_not_recorded_and_a_bad_registry_entry_is_retried():
    async def scenario():
        store: dict[str, str] = {}
        engine, api = replica(store)
        assert await post(api, LOAD_PATH, {"lora_name": "y", "lora_path": "/missing/y"}) == 404
        assert store == {} and engine.adapters == {}
        store["z"] = "/missing/z"  # recorded elsewhere, fails here
        await api.sync()
        assert api.failed == {("z", "/missing/z")} and engine.adapters == {}
        store["z"] = "/adapters/z"  # fixed: the next sync loads it
        await api.sync()
        assert engine.adapters == {"z": "/adapters/z"} and api.failed == {("z", "/missing/z")}

    asyncio.run(scenario())


def test_a_name_loaded_again_with_another_path_is_replaced_everywhere():
    async def scenario():
        store: dict[str, str] = {}
        (engine_a, a), (engine_b, b) = replica(store), replica(store)
        assert await post(a, LOAD_PATH, {"lora_name": "x", "lora_path": "/v1/x"}) == 200
        await b.sync()
        body = {"lora_name": "x", "lora_path": "/v2/x", "load_inplace": True}
        assert await post(a, LOAD_PATH, body) == 200
        await b.sync()
        assert engine_a.adapters == engine_b.adapters == {"x": "/v2/x"}
        assert b.loaded == {"x": "/v2/x"}

    asyncio.run(scenario())


def test_other_routes_pass_through():
    async def scenario():
        _, api = replica({})
        return await post(api, "/v1/completions", {"max_tokens": 1})

    assert asyncio.run(scenario()) == 200
