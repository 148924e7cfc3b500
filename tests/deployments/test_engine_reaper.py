"""A replica's engine processes never outlive it, even when it is SIGKILLed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil

from serve_app.deployments import engine_reaper

# A stand-in replica: starts the reaper, then an "engine" child and grandchild, then waits.
REPLICA = textwrap.dedent(
    """
    import subprocess, sys, time
    from serve_app.deployments import engine_reaper
    engine_reaper.start()
    engine = subprocess.Popen([sys.executable, "-c",
        "import subprocess, sys, time;"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']);"
        "time.sleep(600)"])
    print(engine.pid, flush=True)
    time.sleep(600)
    """
)


def test_engine_processes_are_stopped_when_the_replica_is_killed():
    replica = subprocess.Popen([sys.executable, "-c", REPLICA], stdout=subprocess.PIPE, text=True)
    engine = psutil.Process(int(replica.stdout.readline()))
    deadline = time.monotonic() + 10
    while len(engine.children()) < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    grandchild = engine.children()[0]
    # The reaper records descendants every POLL_S; a few polls leave room for its own start-up
    # (a Python process importing psutil) on a loaded machine.
    time.sleep(3 * engine_reaper.POLL_S)

    os.kill(replica.pid, signal.SIGKILL)
    replica.wait(timeout=10)
    gone, alive = psutil.wait_procs([engine, grandchild], timeout=15)
    for proc in alive:
        proc.kill()
    assert alive == [], "orphaned engine processes survived their replica"
    assert len(gone) == 2
