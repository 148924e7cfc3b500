"""The cluster scripts on a two-node Ray cluster on one machine.

A head node, and a second node (`ray start --address`) whose `accelerator_type:TEST` resource
stands in for a GPU node. The app is deployed with GPU_TYPE=TEST and TENSOR_PARALLEL_SIZE=2
(vLLM's CPU backend with two workers): the replica's placement-group bundles must land on the
second node, all together (STRICT_PACK), exactly as the plan says.

`ray stop` (in cluster/stop.sh) stops every Ray process of the machine, so this module needs
the machine to itself and checks that first.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import psutil
import pytest
import requests
import yaml

from serve_app.config.placement import plan_replica
from tests.conftest import stop_processes

pytestmark = [pytest.mark.e2e, pytest.mark.own_ray]

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
RAY_PROCESS_NAMES = ("gcs_server", "raylet", "ray::", "VLLM::", "default_worker")


def ray_processes() -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        text = " ".join(proc.info["cmdline"] or []) + " " + (proc.info["name"] or "")
        if any(name in text for name in RAY_PROCESS_NAMES):
            found.append(proc)
    return found


_handed_out: set[int] = set()


def free_port() -> int:
    """A free port below the kernel's ephemeral range (32768+ on Linux).

    A port the kernel picks (bind to 0) can be taken again, as the local end of any outgoing
    connection, before Ray binds it; the dashboard then fails to start. Ports below the
    ephemeral range are not handed out that way."""
    for _ in range(200):
        port = random.randrange(20000, 32000)
        if port in _handed_out:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free port in 20000-32000")


def node_ports(first: int) -> dict[str, str]:
    names = [
        "NODE_MANAGER_PORT",
        "OBJECT_MANAGER_PORT",
        "RUNTIME_ENV_AGENT_PORT",
        "DASHBOARD_AGENT_GRPC_PORT",
        "DASHBOARD_AGENT_LISTEN_PORT",
        "METRICS_EXPORT_PORT",
    ]
    ports = {name: str(free_port()) for name in names}
    return {**ports, "MIN_WORKER_PORT": str(first), "MAX_WORKER_PORT": str(first + 400)}


def second_haproxy_ports() -> dict[str, str]:
    """A second node on the same machine runs its own HAProxy: it needs ports of its own."""
    return {
        "RAY_SERVE_WORKER_PROXY_HTTP_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
    }


class Cluster:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.ray_port, self.dashboard_port, self.serve_port = free_port(), free_port(), free_port()
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MODEL_"))},
            "RAY_PORT": str(self.ray_port),
            "DASHBOARD_PORT": str(self.dashboard_port),
            # replaced or deleted ingress replicas drain for 2 s, not 30 (tests/e2e/conftest.py)
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
        }

    def run(self, script: str, *args: str, extra: dict | None = None, timeout: float = 900):
        return subprocess.run(
            [str(CLUSTER / script), *args],
            cwd=ROOT,
            env={**self.env, **(extra or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def config(self, name: str, **settings) -> Path:
        config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
        config["http_options"] = {"host": "127.0.0.1", "port": self.serve_port}
        config["applications"][0]["args"] = settings
        path = self.tmp / name
        path.write_text(yaml.safe_dump(config))
        return path

    def driver(self, code: str) -> str:
        """Run `code` as a Ray driver connected to the cluster; its stdout."""
        script = (
            f"import ray\nray.init(address='127.0.0.1:{self.ray_port}', logging_level='ERROR')\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", script + textwrap.dedent(code)],
            env={**self.env, "RAY_AUTH_MODE": "token"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, tiny_tp_model):
    foreign = ray_processes()
    assert not foreign, f"another Ray instance runs on this machine: {[p.pid for p in foreign]}"
    cluster = Cluster(tmp_path_factory.mktemp("cluster"))
    # short: Ray's Unix sockets live under it, and their paths may not exceed 107 bytes
    # (under pytest's tmp_path, the dashboard's modules fail to start)
    ray_temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    try:
        head = cluster.run(
            "start-head.sh", "--num-cpus", "2", "--temp-dir", ray_temp,
            extra=node_ports(11000),
        )  # fmt: skip
        assert head.returncode == 0, head.stderr
        worker = cluster.run(
            "start-worker.sh", f"127.0.0.1:{cluster.ray_port}",
            "--num-cpus", "4", "--resources", json.dumps({"accelerator_type:TEST": 1}),
            extra={**node_ports(11500), **second_haproxy_ports()},
        )  # fmt: skip
        assert worker.returncode == 0, worker.stderr
        cluster.settings = {
            "MODEL_NAME": str(tiny_tp_model),
            "OPENAI_SERVED_MODEL_NAME_OVERRIDE": "tiny-tp",
            "TENSOR_PARALLEL_SIZE": 2,
            "GPU_TYPE": "TEST",
            "BASE_PATH": str(cluster.tmp / "base"),
            "DISABLE_LOG_STATS": True,
        }
        yield cluster
    finally:
        stop = cluster.run("stop.sh", timeout=180)
        leftovers = ray_processes()
        stop_processes(leftovers)
        shutil.rmtree(ray_temp, ignore_errors=True)
        assert stop.returncode == 0, stop.stderr
        assert not leftovers, f"stop.sh left {[p.pid for p in leftovers]} running"


def test_a_plan_no_node_can_hold_is_refused_before_deploying_saying_why(cluster):
    config = cluster.config("too-big.yaml", **{**cluster.settings, "TENSOR_PARALLEL_SIZE": 8})
    deploy = cluster.run("deploy.sh", str(config), timeout=300)
    assert deploy.returncode == 2, deploy.stderr
    assert "needs {CPU: 9" in deploy.stderr and "on one node" in deploy.stderr
    assert "largest node has {CPU: 4" in deploy.stderr
    assert "deploying" not in deploy.stderr  # refused before `serve deploy`
    status = cluster.run("status.sh", timeout=60)
    assert "LLM" not in status.stdout, status.stdout  # nothing was deployed


def test_replica_bundles_are_placed_as_planned_and_the_model_serves(cluster):
    deploy = cluster.run("deploy.sh", str(cluster.config("serve.yaml", **cluster.settings)))
    assert deploy.returncode == 0, deploy.stderr

    planned = plan_replica("cpu", 2, 1, accelerator_type="TEST")
    placement = json.loads(
        cluster.driver(
            """
            import json
            from ray.util import placement_group_table
            nodes = {n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}
            groups = [g for g in placement_group_table().values() if g["state"] == "CREATED"]
            print(json.dumps({"nodes": nodes, "groups": groups}))
            """
        )
    )
    (group,) = [g for g in placement["groups"] if len(g["bundles"]) == 3]
    assert list(group["bundles"].values()) == planned.placement_group_bundles
    assert group["strategy"] == planned.placement_group_strategy == "STRICT_PACK"
    (gpu_node,) = [n for n, r in placement["nodes"].items() if "accelerator_type:TEST" in r]
    assert set(group["bundles_to_node_id"].values()) == {gpu_node}

    reply = requests.post(
        f"http://127.0.0.1:{cluster.serve_port}/v1/completions",
        json={"model": "tiny-tp", "prompt": "Hello", "max_tokens": 5, "ignore_eos": True},
        timeout=120,
    ).json()
    assert reply["usage"]["completion_tokens"] == 5  # two tensor-parallel CPU workers

    status = cluster.run("status.sh", timeout=60)
    assert status.returncode == 0 and "LLM" in status.stdout and "RUNNING" in status.stdout


def llm_deployment(cluster: Cluster) -> dict:
    """Serve's details of the LLM deployment: its config and its replicas."""
    return json.loads(
        cluster.driver(
            """
            import json
            from ray.serve.context import _get_global_client
            details = _get_global_client().get_serve_details()
            print(json.dumps(details["applications"]["llm"]["deployments"]["LLM"]))
            """
        )
    )


def test_scale_changes_replica_bounds_without_restarting_replicas(cluster):
    before = {r["replica_id"] for r in llm_deployment(cluster)["replicas"]}
    config = cluster.config("scale.yaml", **cluster.settings)
    scaled = cluster.run("scale.sh", "1", "2", str(config))
    assert scaled.returncode == 0, scaled.stderr
    after = llm_deployment(cluster)
    autoscaling = after["deployment_config"]["autoscaling_config"]
    assert (autoscaling["min_replicas"], autoscaling["max_replicas"]) == (1, 2)
    # the planned target survives (the default is far lower: vLLM batches internally)
    assert autoscaling["target_ongoing_requests"] == 64
    # applied in place (the app's args did not change): the replica that served still serves
    assert {r["replica_id"] for r in after["replicas"]} == before and len(before) == 1
