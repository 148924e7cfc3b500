"""What both tiers share: the tiny models made at test time (session fixtures), and helpers
that wait for a state (bounded) or stop the processes a test started (by PID, not by name).

The fast tier (tests/<layer>/, no Ray, no vLLM engine) and the end-to-end tier (tests/e2e/: the
real application on a real Ray cluster and the real engine on CPU, with real clients; its own
conftest) are laid out like serve_app/.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from serve_app.config.ray_env import apply_ray_env
from tests.tiny_model import build_lora_adapter, build_tiny_model

# Ray reads its settings (RAY_SERVE_ENABLE_HA_PROXY, ...) when its processes start, and
# ray.serve reads them once, when first imported: applied here, before any test module imports
# ray, the tests' processes and clusters run as the project's launchers start them.
apply_ray_env(os.environ)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants() -> list[psutil.Process]:
    return psutil.Process().children(recursive=True)


def stop_processes(procs: list[psutil.Process], timeout: float = 20.0) -> None:
    """Terminate the given processes (if still running), then kill what remains."""
    alive = [p for p in procs if p.is_running()]
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, remaining = psutil.wait_procs(alive, timeout=timeout)
    for proc in remaining:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(remaining, timeout=5)


REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A real Redis server on a free loopback port for the session (Debian's, unpacked by
    `make test` with cluster/redis.sh, or one on PATH), stopped when the session ends."""
    binary = shutil.which("redis-server") or str(REPO / ".cache/redis/bin/redis-server")
    if not Path(binary).exists():
        pytest.fail("no redis-server: run `cluster/redis.sh install` (make test does)")
    port = free_port()
    data = tmp_path_factory.mktemp("redis")
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
         "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(lambda: _accepts(port), timeout=20)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop_processes([psutil.Process(server.pid)])
        server.wait(timeout=10)


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny_tp_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model whose heads divide by 2 (tensor parallelism 2)."""
    return build_tiny_model(
        tmp_path_factory.mktemp("models") / "tiny-tp", num_heads=4, num_kv_heads=2
    )


@pytest.fixture(scope="session")
def tiny_embedding_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny embedding model (vLLM's pooling runner)."""
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-embed", embedding=True)


@pytest.fixture(scope="session")
def tiny_lora(tiny_model: Path) -> Path:
    return build_lora_adapter(tiny_model, tiny_model.parent / "tiny-lora")


def wait_for(predicate: Any, timeout: float = 60.0, interval: float = 0.2) -> Any:
    """Poll `predicate` until it returns something truthy (returned), or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


async def reached(predicate: Any, timeout: float = 5.0) -> None:
    """In a test's event loop: let other tasks run until `predicate()` holds, or fail after
    `timeout` (a fixed sleep is not enough on a loaded machine: a stalled process can resume
    with the sleep's timer due before the tasks it waits for have run)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.001)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The fast tier first (a broken layer fails within a minute); then the end-to-end modules
    that start a Ray instance of their own (`own_ray`), before the shared cluster starts, so two
    Ray instances never share the machine; then the rest of the end-to-end tier."""

    def order(item: pytest.Item) -> tuple[bool, bool]:
        e2e = item.get_closest_marker("e2e") is not None
        return e2e, item.get_closest_marker("own_ray") is None

    items.sort(key=order)
