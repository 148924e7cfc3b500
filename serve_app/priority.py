"""Scheduling priorities of the LLM replica, its engine and Ray's background processes on its
node (LLM_REPLICA_NICENESS, LLM_ENGINE_NICENESS, BACKGROUND_NICENESS).

The LLM replica's process is what `vllm serve`'s API server is (HTTP, chat templates,
tokenization, detokenization, streaming), and vLLM runs that at nice 0. Ray starts its workers
at nice 15 unless told otherwise (RAY_worker_niceness); at 15 beside other work on few cores,
each request waits for CPU at every hop between the replica's threads: on the 2-core
development machine vLLM's own request preparation took 56 ms instead of 26 ms under load
(docs/benchmarks/README.md, step 13). The engine's processes (vLLM's engine core, which
busy-polls its workers, and the workers) did better at 15 there: at 0 they take the CPU the
replica needs to start requests (step 14).

So where this project starts Ray, its workers start at 0 (RAY_worker_niceness=0), and each
LLM replica, once its engine runs, sets its engine's processes to LLM_ENGINE_NICENESS (15):
raising a nice value needs no privilege, so this works in any container. Where Ray was started
at 15 by someone else, the replica lowers its own value to LLM_REPLICA_NICENESS (0), which
needs CAP_SYS_NICE (root outside a container; `docker run --cap-add SYS_NICE`); without it the
replica keeps its priority and says how to allow it.

Ray's and Serve's own processes that no request passes through (GCS, dashboard, dashboard and
runtime-env agents, log monitor, autoscaler monitor, Serve's controller and its Python proxy,
idle beside Serve's HAProxy) take about 11 % of a core between them under load, and at nice 0
they preempt the replica and the engine whenever their timers fire. With BACKGROUND_NICENESS
(say 19) each LLM replica raises those on its node, where they run in the CPU the serving path
leaves: 1.05x on the OpenAI benchmark, but up to half the rate for RunPod `/run` + `/stream`
jobs whose clients poll every 50 ms (level at 250 ms and 1 s polls), so it is off (0) by
default (docs/benchmarks steps 16, 17). Left as they are: the
raylet (workers started later inherit its value, and a new replica could not lower its own),
every Serve replica, and Serve's HAProxy manager (HAProxy, on the token path, inherits its
value when it restarts).

On vLLM's CPU backend, where the replica and its engine core keep off the workers' CPUs
(serve_app/worker_cpus.py), the workers run at the replica's value instead.

Linux keeps a nice value per thread (new threads inherit their creator's), so every thread of
a process is set.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

import psutil


def thread_ids(pid: int) -> list[int]:
    """The threads of process `pid` on Linux; elsewhere the process itself."""
    try:
        return [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError:
        return [pid]


def _set_threads(
    pid: int, value: int, tolerate: tuple[type[OSError], ...] = (ProcessLookupError,)
) -> None:
    """Every thread of `pid` at nice `value`; a thread that ended meanwhile is skipped."""
    for tid in thread_ids(pid):
        with contextlib.suppress(*tolerate):
            os.setpriority(os.PRIO_PROCESS, tid, value)


def set_niceness(value: int, pids: list[int], variable: str, what: str) -> tuple[bool, str]:
    """Set every thread of the processes `pids` (`what`, for the log) to nice `value`, as
    `variable` asks: (done, what happened for the log). If the system refuses (a higher
    priority than they have, without CAP_SYS_NICE), every process keeps the value it had."""
    before: dict[int, int] = {}
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            before[pid] = os.getpriority(os.PRIO_PROCESS, pid)
    was = ", ".join(str(nice) for nice in sorted(set(before.values()))) or "-"
    try:
        for pid in before:
            _set_threads(pid, value)
    except PermissionError:
        for pid, nice in before.items():  # all alike, as before
            _set_threads(pid, nice, (ProcessLookupError, PermissionError))
        return False, (
            f"{variable}={value}: not allowed to raise the priority of {what} above nice {was} "
            f"(that needs CAP_SYS_NICE: root, or `docker run --cap-add SYS_NICE`; or start Ray "
            f"with RAY_worker_niceness={value}, as `make serve`, the container and cluster/ "
            f"do); it keeps nice {was}. {variable}={was} keeps it without this warning."
        )
    return True, f"{what} at nice {value} (was {was})"


def set_replica_niceness(value: int) -> tuple[bool, str]:
    """This process (the LLM replica), every thread, at nice `value`."""
    return set_niceness(value, [os.getpid()], "LLM_REPLICA_NICENESS", "this LLM replica")


def engine_pids(exclude: set[int]) -> list[int]:
    """The engine's processes: this process's descendants but `exclude`."""
    return [p.pid for p in psutil.Process().children(recursive=True) if p.pid not in exclude]


def set_engine_niceness(value: int, engine: list[int]) -> tuple[bool, str]:
    """The engine's processes `engine` at nice `value`."""
    if not engine:
        return True, "LLM_ENGINE_NICENESS: the engine runs no processes of its own here"
    pids = ", ".join(map(str, engine))
    return set_niceness(value, engine, "LLM_ENGINE_NICENESS", f"the engine's processes ({pids})")


# Ray's processes that its raylet starts and no request passes through, by process title.
BACKGROUND_ACTORS = (
    "ray::DashboardAgent",
    "ray::RuntimeEnvAgent",
    "ray::ServeController",
    "ray::ProxyActor",
)


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    ppid: int
    cmdline: str  # Ray's workers show their title here (`ray::ServeController`)


def process_table() -> list[ProcessInfo]:
    """Every process of this machine, as background_pids reads them."""
    return [
        ProcessInfo(p.info["pid"], p.info["ppid"], " ".join(p.info["cmdline"] or []))
        for p in psutil.process_iter(["pid", "ppid", "cmdline"])
    ]


def session_dir(raylet_cmdline: str) -> str | None:
    """The Ray session directory a raylet serves, from its command line."""
    found = re.search(r"--session_dir=(\S+)", raylet_cmdline)
    return found.group(1) if found else None


def background_pids(processes: Iterable[ProcessInfo], raylet: int) -> list[int]:
    """The processes of `raylet`'s Ray session on this machine that no request passes through:
    the daemons started beside the raylet (GCS, dashboard, log monitor, monitor: their command
    lines name the session's directory), the raylet's children titled as BACKGROUND_ACTORS,
    and all their descendants. Never a raylet (another node's may run on this machine), the
    raylet's ancestors, or any other process a raylet started (replicas, HAProxy's manager,
    user actors) or their children."""
    by_pid = {p.pid: p for p in processes}
    children: dict[int, list[int]] = {}
    for p in by_pid.values():
        children.setdefault(p.ppid, []).append(p.pid)

    def descendants(pid: int) -> set[int]:
        found, todo = set(), [pid]
        while todo:
            for child in children.get(todo.pop(), []):
                if child not in found:
                    found.add(child)
                    todo.append(child)
        return found

    if raylet not in by_pid:
        return []
    actors: set[int] = set()
    for pid in children.get(raylet, []):
        if by_pid[pid].cmdline.startswith(BACKGROUND_ACTORS):
            actors |= {pid} | descendants(pid)
    protected: set[int] = set()
    for p in by_pid.values():  # ours and those of other nodes on this machine (tests, ...)
        if p.pid == raylet or p.cmdline.split(" ", 1)[0].rsplit("/", 1)[-1] == "raylet":
            protected |= {p.pid} | descendants(p.pid)
    protected -= actors
    ancestor = by_pid[raylet].ppid
    while ancestor in by_pid and ancestor not in protected:
        protected.add(ancestor)
        ancestor = by_pid[ancestor].ppid
    found = set(actors)
    if session := session_dir(by_pid[raylet].cmdline):
        names_session = re.compile(re.escape(session) + r"(/|\s|$)")
        for p in by_pid.values():
            if p.pid not in protected and p.pid not in found and names_session.search(p.cmdline):
                found |= {p.pid} | descendants(p.pid)
    return sorted(found - protected)


def set_background_niceness(value: int) -> tuple[bool, str]:
    """Ray's background processes on this node (background_pids; this process's parent is its
    raylet) raised to at least nice `value`; none is lowered, and 0 (the default) leaves them
    all as Ray started them. A process this user may not change (another user's) is skipped
    and named."""
    if value == 0:
        return True, "BACKGROUND_NICENESS=0: Ray's background processes left as Ray started them"
    raylet = psutil.Process().parent()
    if raylet is None or raylet.name() != "raylet":
        return True, "BACKGROUND_NICENESS: not started by a raylet; no Ray processes to set"
    raised, refused = [], []
    for pid in background_pids(process_table(), raylet.pid):
        try:
            if os.getpriority(os.PRIO_PROCESS, pid) < value:
                _set_threads(pid, value)
                raised.append(pid)
        except ProcessLookupError:
            continue
        except PermissionError:
            refused.append(pid)
    message = (
        f"{len(raised)} of Ray's background processes on this node raised to nice {value} "
        f"({', '.join(map(str, raised))})"
        if raised
        else f"Ray's background processes on this node at nice {value} or above already"
    )
    if refused:
        message += f"; not allowed to change {', '.join(map(str, refused))} (another user's)"
    return not refused, message
