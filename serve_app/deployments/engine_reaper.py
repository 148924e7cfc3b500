"""Make sure a replica's engine processes die with the replica.

vLLM's EngineCore and its workers are child processes of the replica. If the replica is
killed (SIGKILL by Ray on a failed health check, `ray stop --force`, the OOM killer), they
are orphaned and keep their memory (and GPUs). A replica therefore starts this sidecar first:
a plain process in its own session, outside Ray's lifecycle, that records the replica's
descendants every second and, once the replica is gone, terminates those still running.

    python -m serve_app.deployments.engine_reaper PID
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time

import psutil

POLL_S = 1.0
GRACE_S = 5.0


def start(pid: int | None = None) -> subprocess.Popen:
    """Start the sidecar watching `pid` (default: this process)."""
    return subprocess.Popen(
        [sys.executable, "-m", "serve_app.deployments.engine_reaper", str(pid or os.getpid())],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=None,
        start_new_session=True,
        close_fds=True,
    )


def _key(proc: psutil.Process) -> tuple[int, float]:
    return proc.pid, proc.create_time()


def watch(pid: int) -> int:
    """Block until `pid` exits, then terminate its recorded descendants. Returns how many."""
    try:
        watched = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return 0
    me = os.getpid()
    known: dict[tuple[int, float], psutil.Process] = {}
    while True:
        try:
            if not watched.is_running() or watched.status() == psutil.STATUS_ZOMBIE:
                break
            for child in watched.children(recursive=True):
                if child.pid != me:
                    known.setdefault(_key(child), child)
        except psutil.NoSuchProcess:
            break
        except psutil.Error:
            pass
        time.sleep(POLL_S)

    alive = []
    for proc in known.values():
        try:
            if proc.is_running():
                proc.terminate()
                alive.append(proc)
        except psutil.Error:
            pass
    _, still_alive = psutil.wait_procs(alive, timeout=GRACE_S)
    for proc in still_alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    if alive:
        print(
            f"engine_reaper: replica {pid} exited; stopped {len(alive)} orphaned engine processes",
            file=sys.stderr,
        )
    return len(alive)


if __name__ == "__main__":
    watch(int(sys.argv[1]))
