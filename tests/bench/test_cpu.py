"""bench/cpu.py and the placements of bench/run.py's `running()`: a server's process tree, the
CPU its processes spend, by role, and the session it runs in. Real processes, no server."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import cpu, report, run

# A parent that starts a child which burns CPU until it has used `seconds` of it, then sleeps.
BURN = """
import subprocess, sys, time
child = "import time\\nend = time.process_time() + {seconds}\\n"
child += "while time.process_time() < end: pass\\ntime.sleep(60)"
subprocess.Popen([sys.executable, "-c", child])
time.sleep(60)
"""


def test_the_cpu_of_a_servers_children_counts_and_not_before_the_first_snapshot():
    parent = subprocess.Popen([sys.executable, "-c", BURN.format(seconds=0.6)])
    try:
        tree = cpu.ProcessTree(parent.pid)
        before = tree.cpu_seconds()  # the child may not exist yet: it counts from zero
        deadline = time.monotonic() + 30
        spent = 0.0
        while spent < 0.6 and time.monotonic() < deadline:
            time.sleep(0.1)
            spent = sum(cpu.spent(before, tree.cpu_seconds()).values())
        assert len(tree.processes()) == 2
        assert 0.6 <= spent < 2.0  # the child's burn (and two interpreters' start-up)
        later = tree.cpu_seconds()
        time.sleep(0.3)
        assert sum(cpu.spent(later, tree.cpu_seconds()).values()) < 0.1  # both sleep now
    finally:
        for process in cpu.ProcessTree(parent.pid).processes():
            process.kill()
        parent.wait(timeout=10)


@pytest.mark.parametrize(
    ("label", "role"),
    [
        ("VLLM::EngineCore", "engine core"),
        ("VLLM::Worker_TP0", "vLLM worker"),
        ("ray::ServeReplica:app:LLM", "replica"),
        ("haproxy", "HAProxy"),
        ("python -m vllm.entrypoints.openai.api_server", "API server"),
        ("ray::ServeController", "Ray"),
        ("ray::HAProxyManager", "Ray"),
        ("gcs_server", "Ray"),
        ("raylet", "Ray"),
        ("python dashboard.py", "Ray"),
        ("python -m serve_app", "Ray"),
        ("python", "other"),
    ],
)
def test_each_process_has_a_role(label, role):
    assert cpu.role(label) == role


def test_roles_sum_labels_and_medians_take_each_roles_median():
    used = {"VLLM::EngineCore": 2.0, "raylet": 0.5, "gcs_server": 0.25, "haproxy": 0.1}
    assert cpu.by_role(used) == {"engine core": 2.0, "Ray": 0.75, "HAProxy": 0.1}
    assert cpu.per_1k_tokens(2.0, 4000) == 500.0
    runs = {
        "vllm": [
            {"round": 0, **dict.fromkeys(run.METRICS, 1.0), run.CPU: 900.0,
             "cpu_roles": {"API server": 300.0, "engine core": 600.0}},
            {"round": 1, **dict.fromkeys(run.METRICS, 1.0), run.CPU: 1100.0,
             "cpu_roles": {"engine core": 1100.0}},
        ]
    }  # fmt: skip
    (medians,) = run.medians(runs).values()
    assert medians[run.CPU] == 1000.0
    # a role a run lacks counted as 0 in that run; in the table's order of roles
    assert medians["cpu_roles"] == {"API server": 150.0, "engine core": 850.0}


def test_the_table_shows_cpu_per_token_its_ratio_and_where_it_goes():
    medians = {
        "vllm": {**dict.fromkeys(run.METRICS, 10.0), run.CPU: 800.0,
                 "cpu_roles": {"API server": 200.0, "engine core": 600.0}},
        "ours": {**dict.fromkeys(run.METRICS, 10.0), run.CPU: 1200.0,
                 "cpu_roles": {"replica": 300.0, "engine core": 650.0, "Ray": 250.0}},
    }  # fmt: skip
    runs = {name: [{"round": 0, **m}] for name, m in medians.items()}
    workload = {"name": "overhead", "served_name": "tiny", "input_len": 64, "output_len": 64,
                "prompts": 200, "concurrency": 32, "placement": "own"}  # fmt: skip
    text = report.table([{"workload": workload, "runs": runs, "medians": medians, "jobs": []}])
    assert text.startswith("**overhead**, servers in a session of their own: `tiny`")
    assert (
        "| CPU of all the server's processes per 1,000 output tokens (ms) | 800 | 1200 | 1.50x |"
        in text
    )
    assert "| role | vLLM's server | this app |\n|---|---|---|" in text
    assert "| API server | 200 | 0 |\n| replica | 0 | 300 |\n| engine core | 600 | 650 |" in text
    assert "| Ray | 0 | 250 |" in text


SERVER = """
import os, sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
from bench import run
port = run.free_port()
serve = "from http.server import SimpleHTTPRequestHandler as H, test; "
serve += "test(H, port=int(__import__('sys').argv[1]), bind='127.0.0.1')"
command = [sys.executable, "-c", serve, str(port)]
with run.running(command, dict(os.environ), f"http://127.0.0.1:{{port}}/", Path(sys.argv[1]),
                 sys.argv[2]) as tree:
    print(os.getsid(0), os.getsid(tree.pid), os.getpgid(tree.pid) == tree.pid, flush=True)
"""


@pytest.mark.parametrize("placement", run.PLACEMENTS)
def test_a_server_runs_in_the_session_its_placement_says(tmp_path, placement):
    script = SERVER.format(root=str(Path(run.ROOT)))
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "server.log"), placement],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    ours, its, group_leader = out.stdout.split()
    assert (ours == its) == (placement == "same")
    assert group_leader == "True"  # stopped as a group either way
    assert os.getsid(0) == int(ours)


def test_the_route_picker_counts_apart_from_the_llm_replicas():
    used = {
        "ray::ServeReplica:llm:RoutePicker": 0.2,
        "ray::ServeReplica:llm:LLM": 1.0,
        "VLLM::EngineCore": 3.0,
        "haproxy": 0.1,
    }
    roles = cpu.by_role(used)
    assert cpu.per_1k_tokens(sum(roles.values()), 1000) == pytest.approx(4300)
    assert {k: round(cpu.per_1k_tokens(v, 1000)) for k, v in roles.items()} == {
        "HAProxy": 100,
        "engine core": 3000,
        "replica": 1000,
        "route picker": 200,
    }
