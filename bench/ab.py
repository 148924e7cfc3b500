"""A/B of settings that can change while a server runs: alternated run by run in one start.

    python bench/ab.py --set engine=15                       # this app's engine core: nice 0 vs 15
    python bench/ab.py --server vllm --set server=15 engine=15 worker=15
    python bench/ab.py --set engine=15:batch worker=15:batch # the same nice, under SCHED_BATCH
    python bench/ab.py --pin server=1 haproxy=1              # on CPU 1 (vLLM's worker is on 0)
    python bench/ab.py --direct                              # through HAProxy vs to the replica
    python bench/ab.py --placement own --pin engine=0,1      # engine core where vLLM leaves it
    python bench/ab.py --server vllm --pin engine=0          # vLLM's, on its worker's CPU

A is the server as it started; B is the same server with the processes of the given roles
(`server`: vLLM's API server or this app's LLM replica; `engine`: vLLM's engine core;
`worker`: vLLM's worker; `haproxy`) reniced (`--set ROLE=NICE`, `ROLE=NICE:batch` for
Linux's SCHED_BATCH policy, under which a waking thread does not preempt the running one)
and/or pinned to CPUs (`--pin ROLE=CPU,...`), and/or, with `--direct`, the client sent
straight to the replica's own HTTP port instead of Serve's HAProxy. Runs go A B, B A, ...
(`--pairs` pairs) with one resident benchmark client (vLLM's, imported once: a run then takes
seconds, not the ~10 s of a fresh client), so neither start-to-start variance nor a drifting
machine favours a side. Prints each run, the medians and in how many pairs B did better. The
server runs in the client's session or in one of its own (`--placement`, as in bench/run.py);
only its processes are touched; nothing is written under docs/.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import cpu, report, run  # noqa: E402
from serve_app.host import priority  # noqa: E402

ROLES = ("server", "engine", "worker", "haproxy")


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


def processes_by_role(tree: cpu.ProcessTree) -> dict[str, list[psutil.Process]]:
    """The server's processes, by role."""
    found: dict[str, list[psutil.Process]] = {role: [] for role in ROLES}
    for process in tree.processes():
        with contextlib.suppress(psutil.Error):
            if role := role_of(process):
                found[role].append(process)
    return found


POLICIES = {os.SCHED_OTHER: "SCHED_OTHER", os.SCHED_BATCH: "SCHED_BATCH"}


@dataclass(frozen=True)
class Scheduling:
    """How a role's threads are scheduled: nice value, policy and the CPUs they may run on
    (None: leave as it is)."""

    nice: int | None = None
    policy: int | None = None
    cpus: frozenset[int] | None = None

    def __str__(self) -> str:
        parts = [f"nice {self.nice}"] if self.nice is not None else []
        if self.policy is not None:
            parts.append(POLICIES.get(self.policy, f"policy {self.policy}"))
        if self.cpus is not None:
            parts.append("CPUs " + ",".join(map(str, sorted(self.cpus))))
        return " ".join(parts)


def parse_settings(sets: list[str], pins: list[str]) -> dict[str, Scheduling]:
    """B's scheduling by role, from `--set ROLE=NICE[:batch]` and `--pin ROLE=CPU,...`."""
    nice: dict[str, tuple[int, int]] = {}
    for item in sets:
        role, _, value = item.partition("=")
        number, _, policy = value.partition(":")
        if policy not in ("", "batch") or not number.lstrip("-").isdigit():
            raise ValueError(f"{item}: expected ROLE=NICE or ROLE=NICE:batch")
        nice[role] = (int(number), os.SCHED_BATCH if policy else os.SCHED_OTHER)
    cpus: dict[str, frozenset[int]] = {}
    for item in pins:
        role, _, value = item.partition("=")
        if not all(cpu.isdigit() for cpu in value.split(",")):
            raise ValueError(f"{item}: expected ROLE=CPU or ROLE=CPU,CPU,...")
        cpus[role] = frozenset(int(cpu) for cpu in value.split(","))
    return {
        role: Scheduling(*nice.get(role, (None, None)), cpus.get(role))
        for role in [*nice, *(r for r in cpus if r not in nice)]
    }


def describe(settings: dict[str, Scheduling]) -> str:
    return "; ".join(f"{role}: {scheduling}" for role, scheduling in settings.items()) or "-"


def scheduling_of(thread: int) -> Scheduling:
    return Scheduling(
        os.getpriority(os.PRIO_PROCESS, thread),
        os.sched_getscheduler(thread),
        frozenset(os.sched_getaffinity(thread)),
    )


def set_scheduling(thread: int, scheduling: Scheduling) -> None:
    if scheduling.policy is not None:
        os.sched_setscheduler(thread, scheduling.policy, os.sched_param(0))
    if scheduling.nice is not None:
        os.setpriority(os.PRIO_PROCESS, thread, scheduling.nice)
    if scheduling.cpus is not None:
        os.sched_setaffinity(thread, scheduling.cpus)


def threads_of(tree: cpu.ProcessTree, role: str) -> list[int]:
    """The threads of the role's processes (threads carry their own priority, policy and
    affinity on Linux). Looked up each time: Serve restarts HAProxy when its configuration
    changes."""
    return [tid for p in processes_by_role(tree)[role] for tid in priority.thread_ids(p.pid)]


def snapshot(tree: cpu.ProcessTree, role: str) -> tuple[Scheduling, dict[int, Scheduling]]:
    """How the role runs now: its first process's main thread, and each of its threads
    (vLLM's worker runs its OpenMP thread on one CPU and the others anywhere, so A is restored
    thread by thread). Looked up afresh: Serve may have just restarted HAProxy."""
    main, found = None, {}
    for process in processes_by_role(tree)[role]:
        for thread in priority.thread_ids(process.pid):
            with contextlib.suppress(ProcessLookupError):
                found[thread] = scheduling_of(thread)
        main = main or found.get(process.pid)
    if main is None:
        raise SystemExit(f"no process found for {role}")
    return main, found


def schedule(
    tree: cpu.ProcessTree,
    role: str,
    default: Scheduling,
    by_thread: dict[int, Scheduling] | None = None,
) -> None:
    """Every thread of the role's processes as `by_thread` says (A: the snapshot), a thread
    it does not name (B; in A one started since, a restarted HAProxy) as `default`."""
    for thread in threads_of(tree, role):
        with contextlib.suppress(ProcessLookupError):
            set_scheduling(thread, (by_thread or {}).get(thread, default))


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--server", choices=sorted(run.SERVERS), default="ours")
    parser.add_argument("--workload", choices=["overhead", "realistic"], default="overhead")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--placement", choices=run.PLACEMENTS, default="same")
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="ROLE=NICE[:batch]",
        help=f"B's priority (and policy) of a role's processes; roles: {', '.join(ROLES)}",
    )
    parser.add_argument(
        "--pin", nargs="+", default=[], metavar="ROLE=CPU,...", help="B's CPUs of a role"
    )
    parser.add_argument("--direct", action="store_true", help="B: straight to the replica")
    ns = parser.parse_args()
    try:
        settings = parse_settings(ns.set, ns.pin)
    except ValueError as exc:
        parser.error(str(exc))
    if unknown := set(settings) - set(ROLES):
        parser.error(f"unknown role(s) {sorted(unknown)}; roles: {', '.join(ROLES)}")
    if ns.direct and ns.server != "ours":
        parser.error("--direct applies to this app (--server ours)")
    if not settings and not ns.direct:
        parser.error("nothing to compare: give --set, --pin and/or --direct")

    workload = dataclasses.replace(run.workloads([ns.workload])[0], placement=ns.placement)
    tokenizer = run.tokenizer_for(workload)
    out = run.CACHE / "ab"
    out.mkdir(parents=True, exist_ok=True)
    result = out / "run.json"
    port = run.free_port()
    runs: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
    with run.SERVERS[ns.server](workload, port, out / f"{ns.server}.log") as tree:
        roles = processes_by_role(tree)
        if missing := [role for role in settings if not roles[role]]:
            raise SystemExit(f"no process found for {missing}")
        original = {role: snapshot(tree, role) for role in settings}
        ports = {"A": port, "B": replica_port(roles["server"][0]) if ns.direct else port}
        started = {role: main for role, (main, _) in original.items()}
        print(f"[ab] A: as started {describe(started)}, port {ports['A']}; "
              f"B: {describe(settings)}, port {ports['B']}", flush=True)  # fmt: skip
        client = run.ResidentClient()
        try:
            client.run(run.client_args(workload, port, tokenizer, result, workload.concurrency))
            seed = 0  # the warm-up's; every run gets prompts of its own (run.client_args)
            for index in range(ns.pairs):
                for side in ("A", "B") if index % 2 == 0 else ("B", "A"):
                    for role, scheduling in settings.items():
                        if side == "B":
                            schedule(tree, role, scheduling)
                        else:
                            schedule(tree, role, *original[role])
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
        print(f"[ab] median {metric}: A {a:.1f}, B {b:.1f} ({report.ratio(b, a)}); "
              f"B better in {wins} of {ns.pairs} pairs")  # fmt: skip


if __name__ == "__main__":
    main()
