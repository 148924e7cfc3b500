"""The LLM replica's and its engine's priorities (serve_app/host/priority.py), in child processes
(no engine: a process with a child of its own stands in for a replica and its engine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# A "replica" with a second thread and an "engine" child (with a second thread too) starts at
# one niceness, maybe as a user without CAP_SYS_NICE, sets the replica's or the engine's
# niceness, then reports every thread's of both.
CHILD = """
import json, os, sys, threading, time
from serve_app.host import priority
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
