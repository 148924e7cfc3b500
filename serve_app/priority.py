"""The LLM replica's scheduling priority (LLM_REPLICA_NICENESS).

Ray starts its workers at nice 15 so that its own daemons come first; a Serve replica, and
the vLLM engine it starts, inherit it. The LLM replica's process is what `vllm serve`'s API
server is (HTTP, chat templates, tokenization, detokenization, streaming), and vLLM runs that
at nice 0. At 15 beside other work on few cores, each request waits for CPU at every hop
between its threads: on the 2-core development machine vLLM's own request preparation took
56 ms instead of 26 ms under load (docs/benchmarks/README.md, step 13). The replica sets all
its threads to the configured value once its engine runs; the engine's processes, already
started, keep Ray's priority, so a busy-polling engine core never outranks Ray's daemons.

Linux keeps a nice value per thread (new threads inherit their creator's), so every thread
of the process is set. Lowering a value needs CAP_SYS_NICE (root, outside a container;
`docker run --cap-add SYS_NICE` in one); without it the replica keeps its priority and says
how to allow it.
"""

from __future__ import annotations

import contextlib
import os


def thread_ids() -> list[int]:
    """This process's threads on Linux; elsewhere [0], the whole process."""
    try:
        return [int(tid) for tid in os.listdir("/proc/self/task")]
    except FileNotFoundError:
        return [0]


def _set_threads(value: int, tolerate: tuple[type[OSError], ...] = (ProcessLookupError,)) -> None:
    """Every thread at nice `value`; a thread that ended meanwhile is skipped."""
    for tid in thread_ids():
        with contextlib.suppress(*tolerate):
            os.setpriority(os.PRIO_PROCESS, tid, value)


def set_niceness(value: int) -> tuple[bool, str]:
    """Set every thread of this process to nice `value`: (done, what happened for the log)."""
    before = os.getpriority(os.PRIO_PROCESS, 0)
    try:
        _set_threads(value)
    except PermissionError:
        _set_threads(before, (ProcessLookupError, PermissionError))  # all alike, as before
        return False, (
            f"LLM_REPLICA_NICENESS={value}: not allowed to raise this replica's priority "
            f"above nice {before} (that needs CAP_SYS_NICE: root, or `docker run --cap-add "
            f"SYS_NICE`); it keeps nice {before}. LLM_REPLICA_NICENESS={before} keeps it "
            "without this warning."
        )
    after = os.getpriority(os.PRIO_PROCESS, 0)
    return True, f"LLM replica at nice {after} (was {before}); its engine's processes keep {before}"
