"""The Docker image's entry point: what the container runs, chosen by RUN_MODE.

    RUN_MODE=serve            (default) this machine alone: validate, fetch the model(s) with
                              progress, then `serve run serve_config.yaml`
    RUN_MODE=serverless       the classic RunPod serverless worker (serve_app.runpod_worker)
    RUN_MODE=head             start a Ray head, deploy the application, stay up
    RUN_MODE=worker           join the Ray head at RAY_HEAD_ADDRESS (host:port), stay up
    RUN_MODE=instant-cluster  a RunPod Instant Cluster node: the head (and deploy) when
                              NODE_RANK=0, otherwise a worker of PRIMARY_ADDR

In head/worker modes the container lives as long as its Ray node; on SIGTERM (docker stop,
RunPod pod stop) it stops the node (cluster/stop.sh).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
MODES = ("serve", "serverless", "head", "worker", "instant-cluster")


def commands(environ: Mapping[str, str]) -> tuple[list[list[str]], bool]:
    """(commands to run in order, whether to stay up afterwards) for the environment."""
    mode = (environ.get("RUN_MODE") or "serve").strip().lower()
    config = environ.get("SERVE_CONFIG") or str(ROOT / "serve_config.yaml")
    python = sys.executable
    if mode == "serve":
        return [[python, "-m", "serve_app", "serve", config]], False
    if mode == "serverless":
        return [[python, "-m", "serve_app.runpod_worker"]], False
    if mode == "instant-cluster":
        rank = environ.get("NODE_RANK")
        if rank is None:
            raise ValueError(
                "RUN_MODE=instant-cluster: NODE_RANK is not set (not on an Instant Cluster?)"
            )
        if rank == "0":
            mode = "head"
        else:
            primary = environ.get("PRIMARY_ADDR")
            if not primary:
                raise ValueError("RUN_MODE=instant-cluster: PRIMARY_ADDR is not set")
            port = environ.get("RAY_PORT", "6379")
            environ = {**environ, "RAY_HEAD_ADDRESS": f"{primary}:{port}"}
            mode = "worker"
    if mode == "head":
        return [[str(CLUSTER / "start-head.sh")], [str(CLUSTER / "deploy.sh"), config]], True
    if mode == "worker":
        head = environ.get("RAY_HEAD_ADDRESS")
        if not head:
            raise ValueError("RUN_MODE=worker needs RAY_HEAD_ADDRESS (the head's host:port)")
        return [[str(CLUSTER / "start-worker.sh"), head]], True
    raise ValueError(f"RUN_MODE={mode!r}: expected one of {', '.join(MODES)}")


def main() -> None:
    try:
        steps, stay_up = commands(os.environ)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    if not stay_up:
        (command,) = steps
        os.execv(command[0], command)
    for command in steps:
        if subprocess.call(command) != 0:
            sys.exit(f"error: {' '.join(command)} failed")
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(True))
    while not stopping:
        signal.pause()
    sys.exit(subprocess.call([str(CLUSTER / "stop.sh")]))


if __name__ == "__main__":
    main()
