"""Where the serving processes run on vLLM's CPU backend (serve_app/host/worker_cpus.py): the pure
decision, then real processes (a child titled as vLLM's worker, bound to one CPU)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from serve_app.config.plan import HostTuning
from serve_app.host import _place_engine, priority, worker_cpus


@pytest.mark.parametrize(
    ("allowed", "bound", "expected"),
    [
        ({0, 1}, {0}, {1}),  # vLLM's auto binding on 2 cores: one for the worker, one reserved
        ({0, 1, 2, 3, 4, 5, 6, 7}, {1, 2, 3, 4, 5, 6}, {0, 7}),
        ({0, 1}, {0, 1}, None),  # workers on every CPU (several workers' shares): nothing to do
        ({0, 1}, set(), None),  # no worker found
        ({0, 1}, {0, 2}, None),  # bound outside this process's CPUs: not ours to split
        ({2, 3}, {0, 1}, None),
    ],
)
def test_serving_cpus_are_the_ones_the_workers_leave(allowed, bound, expected):
    assert worker_cpus.serving_cpus(allowed, bound) == expected


WORKER = (
    "import os, sys; os.sched_setaffinity(0, {0}); print('bound', flush=True); sys.stdin.read()"
)
WAITER = "import sys; sys.stdin.read()"
TWO_THREADS = (
    "import sys, threading; t = threading.Thread(target=sys.stdin.read); t.start(); t.join()"
)


@pytest.fixture
def worker():
    """A process titled as vLLM's workers are (`VLLM::Worker_TP0`), bound to CPU 0."""
    process = subprocess.Popen(
        ["VLLM::Worker_TP0", "-c", WORKER],
        executable=sys.executable, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stdout.readline().strip() == "bound"
        yield process
    finally:
        process.stdin.close()
        process.wait(timeout=30)


def test_plan_finds_the_workers_and_their_cpus(worker):
    other = subprocess.Popen([sys.executable, "-c", WAITER], stdin=subprocess.PIPE)
    try:
        allowed = os.sched_getaffinity(0)
        split = worker_cpus.plan([worker.pid, other.pid])
        if allowed - {0}:
            assert split == worker_cpus.CpuSplit([worker.pid], {0})
        else:  # a 1-CPU machine: nothing left to reserve
            assert split is None
        assert worker_cpus.plan([other.pid]) is None  # no worker among them
        assert worker_cpus.plan([]) is None
    finally:
        other.stdin.close()
        other.wait(timeout=30)


def test_pin_moves_every_thread_of_a_process():
    """Threads keep their own CPU set on Linux: pin sets each of a process's threads."""
    child = subprocess.Popen([sys.executable, "-c", TWO_THREADS], stdin=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while len(priority.thread_ids(child.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)  # until its second thread runs
        assert len(priority.thread_ids(child.pid)) == 2
        target = {min(os.sched_getaffinity(0))}
        worker_cpus.pin([child.pid], target)
        assert {tid: os.sched_getaffinity(tid) for tid in priority.thread_ids(child.pid)} == {
            tid: target for tid in priority.thread_ids(child.pid)
        }
    finally:
        child.stdin.close()
        child.wait(timeout=30)


def test_the_engine_core_goes_to_its_workers_cpus_and_nothing_else_moves(worker):
    """ENGINE_CORE_ON_WORKER_CPUS, its default on vLLM's CPU backend: every thread of the engine
    core (here a process with two threads) on the CPU of the worker's main thread; this process
    (the replica) keeps its CPUs."""
    allowed = os.sched_getaffinity(0)
    core = subprocess.Popen([sys.executable, "-c", TWO_THREADS], stdin=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while len(priority.thread_ids(core.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)  # until its second thread runs
        results = _place_engine(HostTuning(engine_core_on_worker_cpus=True), [worker.pid, core.pid])
        cpus = {tid: os.sched_getaffinity(tid) for tid in priority.thread_ids(core.pid)}
        if allowed - {0}:
            assert len(cpus) == 2 and set(map(frozenset, cpus.values())) == {frozenset({0})}
            assert f"engine core ({core.pid}) on CPUs 0" in results[-1][1]
        else:  # a 1-CPU machine: nothing to split
            assert set(map(frozenset, cpus.values())) == {frozenset(allowed)}
        assert os.sched_getaffinity(0) == allowed
        assert os.sched_getaffinity(worker.pid) == {0}
        assert _place_engine(HostTuning(), [worker.pid, core.pid])[1:] == []  # nothing asked
    finally:
        core.stdin.close()
        core.wait(timeout=30)
