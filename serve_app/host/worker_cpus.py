"""On vLLM's CPU backend: the engine core on its workers' CPUs (ENGINE_CORE_ON_WORKER_CPUS).

vLLM's CPU backend binds each worker's OpenMP threads to CPUs of their own
(VLLM_CPU_OMP_THREADS_BIND, `auto` by default), the main thread to the first, and reserves the
rest (VLLM_CPU_NUM_OF_RESERVED_CPU, at least one core) "for the scheduler process" (vllm/utils/
ompmultiprocessing.py), which nothing keeps there. The engine core and its workers take turns:
on CPU, vLLM schedules no step ahead, so one waits while the other works, and each waits by
spinning (vLLM's shared-memory queue yields the CPU between checks). Elsewhere the engine core's
spinning takes the CPU the API server (here the LLM replica: HTTP, templates, tokenization,
streaming) and anything else on the machine needs; on the CPUs of its workers' main threads it
only ever yields to them (docs/benchmarks, decision 35).

Nothing changes where the workers are not bound to a part of the CPUs this process may use:
on GPUs, with VLLM_CPU_OMP_THREADS_BIND=nobind, or where they are bound to all of them.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import psutil

from serve_app.host.priority import thread_ids

WORKER_TITLE = "VLLM::Worker"  # vLLM's workers name their processes so (setproctitle)


def serving_cpus(allowed: set[int], worker_cpus: set[int]) -> set[int] | None:
    """The CPUs the workers leave to the serving processes: those of `allowed` they are not bound
    to, or None when they are not bound to a part of `allowed` (nothing to keep apart)."""
    if not worker_cpus or not worker_cpus < allowed:
        return None
    return allowed - worker_cpus


@dataclass(frozen=True)
class CpuSplit:
    workers: list[int]  # the engine's worker processes, bound by vLLM
    worker_cpus: set[int]  # the CPUs of the workers' main threads


def plan(engine_pids: list[int]) -> CpuSplit | None:
    """Where this replica's engine (its processes `engine_pids`) leaves CPUs to the serving
    processes, the split; else None. A worker's CPUs are its main thread's, the OpenMP
    master vLLM binds."""
    workers, bound = [], set()
    for pid in engine_pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            if " ".join(psutil.Process(pid).cmdline()).startswith(WORKER_TITLE):
                workers.append(pid)
                bound |= os.sched_getaffinity(pid)
    serving = serving_cpus(os.sched_getaffinity(0), bound)
    return CpuSplit(workers, bound) if workers and serving else None


def pin(pids: list[int], cpus: set[int]) -> None:
    """Every thread of the processes `pids` on `cpus`; a thread or process that ended
    meanwhile is skipped."""
    for pid in pids:
        for tid in thread_ids(pid):
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(tid, cpus)


def describe(cpus: set[int]) -> str:
    return ",".join(map(str, sorted(cpus)))
