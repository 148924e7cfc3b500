"""The end-to-end tier: the real application (ingress + LLM deployments + vLLM on CPU) on a real
Ray cluster, shared by the session (each module deploys its own app, deleted when the module
ends), talked to over HTTP with real clients. Every process the session starts is stopped when
it ends (collected by PID, not by name)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import descendants, free_port, stop_processes

# An ingress replica that stops waits this long for HAProxy to stop routing to it (30 s by
# default): each test cluster tears down its apps, and scaling tests remove replicas.
os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "2")

APP_START_TIMEOUT_S = 600


@dataclass
class ServeCluster:
    """A Ray cluster with Serve's HTTP proxy on 127.0.0.1:port, owned by one test module."""

    port: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def deploy(self, env: dict[str, str], args: dict[str, Any] | None = None, name: str = "app"):
        """Build the application as `serve run` would (from env + args) and deploy it."""
        from ray import serve

        from serve_app.app import build_from_plan
        from serve_app.config.plan import build_plan
        from serve_app.engine import args as vllm_args

        plan = build_plan(env, args, engine_args=vllm_args)
        serve.run(build_from_plan(plan), name=name, route_prefix="/", blocking=False)
        wait_until_running(name)
        return DeployedApp(self, name, plan, env)

    @contextlib.contextmanager
    def deployed(self, env: dict[str, str], args: dict[str, Any] | None = None):
        """The app deployed for the duration of the block (a module), then deleted."""
        from ray import serve

        app = self.deploy(env, args)
        try:
            yield app
        finally:
            with contextlib.suppress(Exception):
                serve.delete(app.name)  # blocking: its replicas and engines are gone after


@dataclass
class DeployedApp:
    cluster: ServeCluster
    name: str
    plan: Any
    env: dict[str, str]

    @property
    def base_url(self) -> str:
        return self.cluster.base_url

    def handle(self, deployment: str = "LLM"):
        """A handle for this (synchronous) test process. Serve's high-throughput mode
        (RAY_SERVE_THROUGHPUT_OPTIMIZED, on here as in the app) routes a handle's calls on
        the caller's event loop, which a test has not: this one gets its own loop."""
        from ray import serve

        handle = serve.get_deployment_handle(deployment, app_name=self.name)
        if not handle.is_initialized:  # Serve hands out the same handle again
            handle._init(_run_router_in_separate_loop=True)
        return handle

    def openai(self, prefix: str = "/v1", **kwargs: Any):
        from openai import OpenAI

        kwargs.setdefault("api_key", "unused")
        kwargs.setdefault("timeout", 120)
        kwargs.setdefault("max_retries", 0)
        return OpenAI(base_url=self.base_url + prefix, **kwargs)

    def engine_requests(self, deployment: str = "LLM") -> int:
        return self.handle(deployment).stats.remote().result()["unfinished_requests"]

    def running_replicas(self, deployment: str = "LLM") -> int:
        """RUNNING replicas of `deployment`, from Serve's own status."""
        from ray import serve

        status = serve.status().applications[self.name].deployments[deployment]
        return status.replica_states.get("RUNNING", 0)


def wait_until_running(app_name: str, timeout: float = APP_START_TIMEOUT_S) -> None:
    from ray import serve

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = serve.status().applications.get(app_name)
        if status is not None and status.status == "RUNNING":
            return
        if status is not None and status.status == "DEPLOY_FAILED":
            raise RuntimeError(f"{app_name} failed to deploy: {status.message}")
        time.sleep(1)
    raise TimeoutError(f"{app_name} not running after {timeout} s")


@contextlib.contextmanager
def running_serve_cluster(environ: dict[str, str] | None = None) -> Iterator[ServeCluster]:
    """A fresh Ray cluster (8 logical CPUs) with Serve on a free port; stopped afterwards.

    `environ` is added to this process's environment while the cluster runs: Ray's processes
    (replicas, engines) inherit it, as on a machine whose environment holds those variables.
    """
    import ray
    from ray import serve

    before = {p.pid for p in descendants()}
    saved = {name: os.environ.get(name) for name in environ or {}}
    os.environ.update(environ or {})
    port = free_port()
    ray.init(
        num_cpus=8,
        include_dashboard=False,
        log_to_driver=bool(os.environ.get("TEST_RAY_LOGS")),
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield ServeCluster(port)
    finally:
        started = [p for p in descendants() if p.pid not in before]
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()
        stop_processes(started)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# A fake token in the environment of the shared cluster's processes, as a worker's HF_TOKEN
# would be: test_reliability.py checks it never reaches a log, a response or /health.
FAKE_HF_TOKEN = "hf_reliabilityFakeSecret0123456789"


@pytest.fixture(scope="session")
def serve_cluster() -> Iterator[ServeCluster]:
    """One Ray cluster for the modules that deploy apps in-process (starting and stopping
    Ray for each would cost the suite minutes); each module deletes its app when it ends."""
    with running_serve_cluster({"HF_TOKEN": FAKE_HF_TOKEN}) as cluster:
        yield cluster
