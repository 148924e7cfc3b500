"""The LLM replica's priority (serve_app/priority.py), in child processes (no engine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# A process with a second thread sets its niceness, then reports every thread's.
CHILD = """
import json, os, sys, threading
from serve_app import priority
start, value, drop_root = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
os.setpriority(os.PRIO_PROCESS, 0, start)
if drop_root and os.geteuid() == 0:
    os.setuid(65534)  # as any user without CAP_SYS_NICE
stop = threading.Event()
worker = threading.Thread(target=stop.wait)
worker.start()
done, message = priority.set_niceness(value)
nice = [os.getpriority(os.PRIO_PROCESS, tid) for tid in priority.thread_ids()]
stop.set()
worker.join()
print(json.dumps({"done": done, "message": message, "threads": nice}))
"""


def run_child(start: int, value: int, drop_root: bool) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(start), str(value), "1" if drop_root else "0"],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=True,
    )  # fmt: skip
    return json.loads(result.stdout)


def test_every_thread_of_the_replica_process_gets_the_niceness():
    start = os.getpriority(os.PRIO_PROCESS, 0)
    report = run_child(start, start + 4, drop_root=True)  # a lower priority is always allowed
    assert report["done"] is True
    assert len(report["threads"]) >= 2
    assert report["threads"] == [min(start + 4, 19)] * len(report["threads"])
    assert report["message"].startswith(f"LLM replica at nice {min(start + 4, 19)}")


def test_without_the_right_to_raise_priority_the_replica_keeps_its_own_and_says_how():
    report = run_child(15, 0, drop_root=True)
    assert report["done"] is False
    assert report["threads"] == [15] * len(report["threads"])
    assert "CAP_SYS_NICE" in report["message"] and "keeps nice 15" in report["message"]
