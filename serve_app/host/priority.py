"""Scheduling priorities of an LLM replica and its engine (LLM_REPLICA_NICENESS,
LLM_ENGINE_NICENESS).

The LLM replica's process does what `vllm serve`'s API server does (HTTP, chat templates,
tokenization, detokenization, streaming), which vLLM runs at nice 0; Ray starts its workers at
15 unless told otherwise (RAY_worker_niceness, which this project's launchers set to 0). Where
Ray started them at 15, the replica lowers its own value, which needs CAP_SYS_NICE (root outside
a container; `docker run --cap-add SYS_NICE`); without it the replica keeps its priority and
says how to allow it. The engine's processes keep the value they started with unless
LLM_ENGINE_NICENESS is set (raising a nice value needs no privilege).

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


def engine_pids(exclude: set[int]) -> list[int]:
    """The engine's processes: this process's descendants but `exclude`."""
    return [p.pid for p in psutil.Process().children(recursive=True) if p.pid not in exclude]


def set_engine_niceness(value: int, engine: list[int]) -> tuple[bool, str]:
    """The engine's processes `engine` at nice `value`."""
    if not engine:
        return True, "LLM_ENGINE_NICENESS: the engine runs no processes of its own here"
    pids = ", ".join(map(str, engine))
    return set_niceness(value, engine, "LLM_ENGINE_NICENESS", f"the engine's processes ({pids})")
