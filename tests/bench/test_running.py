"""bench/run.py's `running()`: a benchmark stopped by SIGTERM (`timeout`, `kill`) stops the
server it started, as on Ctrl-C. A real process tree: a script runs a small HTTP server
through `running()`, and is sent SIGTERM."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import os, sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
from bench import run
port = run.free_port()
# Ctrl-C's SIGINT as a terminal gives it: a shell's background job starts with it ignored.
serve = "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
serve += "from http.server import SimpleHTTPRequestHandler as H, test; "
serve += "test(H, port=int(sys.argv[1]), bind='127.0.0.1')"
server = [sys.executable, "-c", serve, str(port), "http.server"]
with run.running(server, dict(os.environ), f"http://127.0.0.1:{{port}}/", Path(sys.argv[1])):
    print("up", flush=True)
    time.sleep(120)
print("not stopped", flush=True)
"""


def test_sigterm_stops_the_server_that_running_started(tmp_path):
    script = subprocess.Popen(
        [sys.executable, "-c", SCRIPT.format(root=str(ROOT)), str(tmp_path / "server.log")],
        stdout=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    servers: list[psutil.Process] = []
    try:
        assert script.stdout is not None
        assert script.stdout.readline().strip() == "up"
        servers = [
            child
            for child in psutil.Process(script.pid).children(recursive=True)
            if "http.server" in " ".join(child.cmdline())
        ]
        assert len(servers) == 1
        os.kill(script.pid, signal.SIGTERM)
        assert script.wait(timeout=90) == 128 + signal.SIGTERM
        _, alive = psutil.wait_procs(servers, timeout=30)
        assert not alive, "the server outlived the benchmark"
        assert "not stopped" not in script.stdout.read()
    finally:
        if script.poll() is None:
            script.kill()
            script.wait(timeout=30)
        for server in servers:  # left by a failure: stop it here
            if server.is_running():
                server.kill()
