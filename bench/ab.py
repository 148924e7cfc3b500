"""A/B of settings that can change while a server runs: alternated run by run in one start.

    python bench/ab.py --set engine=19                       # this app's engine core: nice 15 vs 19
    python bench/ab.py --server vllm --set server=15 engine=15 worker=15
    python bench/ab.py --direct                              # through HAProxy vs to the replica

A is the server as it started; B is the same server with the processes of the given roles
reniced (`server`: vLLM's API server or this app's LLM replica; `engine`: vLLM's engine core;
`worker`: vLLM's worker; `haproxy`; `background`: Ray's processes that BACKGROUND_NICENESS
raises) and/or, with `--direct`, the client sent straight to the replica's own HTTP port
instead of Serve's HAProxy. Runs go A B, B A, ... (`--pairs` pairs) with one resident benchmark
client (vLLM's, imported once: a run then takes seconds, not the ~10 s of a fresh client), so
neither start-to-start variance nor a drifting machine favours a side. Prints each run, the
medians and in how many pairs B did better. Only processes of this session are touched (the
benchmark starts its servers in it); nothing is written under docs/.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import run  # noqa: E402
from serve_app import priority  # noqa: E402

ROLES = ("server", "engine", "worker", "haproxy", "background")


def role_of(process: psutil.Process) -> str | None:
    cmdline = " ".join(process.cmdline())
    if cmdline.startswith("VLLM::EngineCore"):
        return "engine"
    if cmdline.startswith("VLLM::Worker"):
        return "worker"
    if process.name() == "haproxy":
        return "haproxy"
    if "vllm.entrypoints.openai.api_server" in cmdline:
        return "server"
    if cmdline.startswith("ray::ServeReplica:") and any(
        " ".join(c.cmdline()).startswith("VLLM::EngineCore") for c in process.children()
    ):
        return "server"  # the LLM replica: the one whose child is an engine core
    return None


def processes_by_role() -> dict[str, list[psutil.Process]]:
    """The serving processes of this session, by role."""
    found: dict[str, list[psutil.Process]] = {role: [] for role in ROLES}
    session = os.getsid(0)
    raylets = []
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) != session:
                continue
            if process.name() == "raylet":
                raylets.append(process.pid)
            if role := role_of(process):
                found[role].append(process)
        except (psutil.Error, ProcessLookupError):
            continue
    table = priority.process_table()
    for raylet in raylets:  # the set this app's replicas raise (BACKGROUND_NICENESS)
        found["background"] += [psutil.Process(p) for p in priority.background_pids(table, raylet)]
    return found


def renice(role: str, nice: int) -> None:
    """Every thread of the role's processes at `nice` (threads carry their own priority on
    Linux). Looked up each time: Serve restarts HAProxy when its configuration changes."""
    for process in processes_by_role()[role]:
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            for thread in process.threads():
                os.setpriority(os.PRIO_PROCESS, thread.id, nice)


def nice_of(processes: list[psutil.Process]) -> int:
    return os.getpriority(os.PRIO_PROCESS, processes[0].pid)


def replica_port(replica: psutil.Process) -> int:
    """The replica's own HTTP port (Serve's direct ingress, which HAProxy forwards to)."""
    for conn in replica.net_connections("tcp"):
        if conn.status == psutil.CONN_LISTEN:
            try:
                url = f"http://127.0.0.1:{conn.laddr.port}/health"
                if httpx.get(url, timeout=5).status_code == 200:
                    return conn.laddr.port
            except httpx.HTTPError:
                continue
    raise RuntimeError("the replica has no HTTP port answering /health")


DONE = "[ab] client run done"


class ResidentClient:
    """vLLM's benchmark client in one process for many runs."""

    def __init__(self) -> None:
        loop = (
            f"for line in sys.stdin:\n    run(json.loads(line))\n    print({DONE!r}, flush=True)\n"
        )
        self._process = subprocess.Popen(
            [sys.executable, "-c", "import json\n" + run.CLIENT_CODE + loop],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, cwd=ROOT, env=run.base_env(),
        )  # fmt: skip

    def run(self, args: list[str]) -> None:
        assert self._process.stdin and self._process.stdout
        self._process.stdin.write(json.dumps(args) + "\n")
        self._process.stdin.flush()
        for line in self._process.stdout:
            if line.strip() == DONE:
                return
        raise RuntimeError(f"the benchmark client exited ({self._process.wait()})")

    def close(self) -> None:
        if self._process.stdin:
            self._process.stdin.close()
        self._process.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--server", choices=sorted(run.SERVERS), default="ours")
    parser.add_argument("--workload", choices=["overhead", "realistic"], default="overhead")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="ROLE=NICE",
        help=f"B's priority of a role's processes; roles: {', '.join(ROLES)}",
    )
    parser.add_argument("--direct", action="store_true", help="B: straight to the replica")
    ns = parser.parse_args()
    settings = {role: int(nice) for role, nice in (item.split("=", 1) for item in ns.set)}
    if unknown := set(settings) - set(ROLES):
        parser.error(f"unknown role(s) {sorted(unknown)}; roles: {', '.join(ROLES)}")
    if ns.direct and ns.server != "ours":
        parser.error("--direct applies to this app (--server ours)")
    if not settings and not ns.direct:
        parser.error("nothing to compare: give --set and/or --direct")

    workload = run.workloads([ns.workload])[0]
    tokenizer = run.tokenizer_for(workload)
    out = run.CACHE / "ab"
    out.mkdir(parents=True, exist_ok=True)
    result = out / "run.json"
    port = run.free_port()
    runs: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
    with run.SERVERS[ns.server](workload, port, out / f"{ns.server}.log"):
        roles = processes_by_role()
        if missing := [role for role in settings if not roles[role]]:
            raise SystemExit(f"no process found for {missing}")
        original = {role: nice_of(roles[role]) for role in settings}
        ports = {"A": port, "B": replica_port(roles["server"][0]) if ns.direct else port}
        print(f"[ab] A: as started {original}, port {ports['A']}; "
              f"B: {settings}, port {ports['B']}", flush=True)  # fmt: skip
        client = ResidentClient()
        try:
            client.run(run.client_args(workload, port, tokenizer, result, workload.concurrency))
            seed = 0  # the warm-up's; every run gets prompts of its own (run.client_args)
            for index in range(ns.pairs):
                for side in ("A", "B") if index % 2 == 0 else ("B", "A"):
                    for role, nice in (settings if side == "B" else original).items():
                        renice(role, nice)
                    seed += 1
                    client.run(run.client_args(workload, ports[side], tokenizer, result, seed=seed))
                    figures = run.read_result(result)
                    runs[side].append({m: figures[m] for m in run.METRICS})
                    print(f"[ab] {side}: " + ", ".join(
                        f"{m} {figures[m]:.1f}" for m in run.METRICS), flush=True)  # fmt: skip
        finally:
            client.close()
    (out / "runs.json").write_text(json.dumps(runs, indent=1))
    medians = run.medians(runs)
    for metric in run.METRICS:
        a, b = medians["A"][metric], medians["B"][metric]
        better = (lambda x, y: x > y) if metric == "output_throughput" else (lambda x, y: x < y)
        wins = sum(
            better(fb[metric], fa[metric]) for fa, fb in zip(runs["A"], runs["B"], strict=True)
        )
        print(f"[ab] median {metric}: A {a:.1f}, B {b:.1f} ({b / a:.2f}x); "
              f"B better in {wins} of {ns.pairs} pairs")  # fmt: skip


if __name__ == "__main__":
    main()
