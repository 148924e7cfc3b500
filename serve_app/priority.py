"""Scheduling priorities of the LLM replica and its engine (LLM_REPLICA_NICENESS,
LLM_ENGINE_NICENESS).

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

Linux keeps a nice value per thread (new threads inherit their creator's), so every thread of
a process is set.
"""

from __future__ import annotations

import contextlib
import os

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


def set_engine_niceness(value: int, exclude: set[int]) -> tuple[bool, str]:
    """The engine's processes (this process's descendants but `exclude`) at nice `value`."""
    engine = [p.pid for p in psutil.Process().children(recursive=True) if p.pid not in exclude]
    if not engine:
        return True, "LLM_ENGINE_NICENESS: the engine runs no processes of its own here"
    pids = ", ".join(map(str, engine))
    return set_niceness(value, engine, "LLM_ENGINE_NICENESS", f"the engine's processes ({pids})")
