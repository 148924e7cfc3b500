"""Where the CPU goes while a server streams a workload, vLLM's own server beside this app.

    python bench/cpu.py                          # overhead workload, one run per server
    python bench/cpu.py --workload realistic
    python bench/cpu.py --prompts 1000           # a longer run: steadier shares

Each server is started as in bench/run.py, warmed up, then driven by vLLM's benchmark client
once; the CPU time every process on the machine spent during that run (psutil, user +
system) is printed per process, as a share of one core and in CPU milliseconds per 1,000
output tokens, with the benchmark client's own. The serving layer's cost per token is the
part to compare: vLLM's API server against this app's replica, HAProxy and Ray's processes.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from collections import defaultdict
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import run  # noqa: E402


def label(process: psutil.Process) -> str:
    """A readable name: Ray's and vLLM's process titles, a Python script's name, or the binary."""
    try:
        cmdline = process.cmdline()
    except psutil.Error:
        return "?"
    if not cmdline:
        return process.name()
    first = cmdline[0]
    if first.startswith(("ray::", "VLLM::")):
        return first.split()[0]
    if "python" in Path(first).name:
        if "-m" in cmdline:
            return "python -m " + cmdline[cmdline.index("-m") + 1]
        script = next((a for a in cmdline[1:] if not a.startswith("-")), None)
        return f"python {Path(script).name}" if script else "python"
    return Path(first).name


def cpu_seconds() -> dict[int, tuple[str, float]]:
    snapshot = {}
    for process in psutil.process_iter():
        try:
            times = process.cpu_times()
            snapshot[process.pid] = (label(process), times.user + times.system)
        except psutil.Error:
            continue
    return snapshot


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(
    workload: run.Workload, server: str, tokenizer: str, logs: Path, prompts: int | None
) -> None:
    port = run.free_port()
    with run.SERVERS[server](workload, port, logs / f"cpu-{workload.name}-{server}.log"):
        run.warm_up(workload, port, tokenizer, logs)
        before, client_before, started = cpu_seconds(), children_cpu(), time.monotonic()
        result = run.bench_client(workload, port, tokenizer, logs / "cpu.json", prompts, seed=1)
        after, wall = cpu_seconds(), time.monotonic() - started
        client = children_cpu() - client_before
    tokens = result["total_output_tokens"]
    used: dict[str, float] = defaultdict(float)
    for pid, (name, seconds) in after.items():
        if pid != os.getpid():
            used[name] += seconds - before.get(pid, (name, 0.0))[1]
    used["benchmark client"] = client
    print(f"\n{server}: {tokens} output tokens in {wall:.1f} s, "
          f"{result['output_throughput']:.0f} tok/s")  # fmt: skip
    print(f"{'process':<44} {'% of a core':>11} {'CPU ms / 1k tok':>16}")
    for name, seconds in sorted(used.items(), key=lambda item: -item[1]):
        if seconds >= 0.005 * wall:
            print(f"{name[:44]:<44} {100 * seconds / wall:>10.1f}% {1e6 * seconds / tokens:>16.0f}")
    total = sum(used.values())
    print(f"{'all processes':<44} {100 * total / wall:>10.1f}% {1e6 * total / tokens:>16.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workload", choices=["overhead", "realistic"], default="overhead")
    servers = list(run.SERVERS)
    parser.add_argument("--servers", nargs="+", choices=servers, default=servers)
    parser.add_argument("--prompts", type=int, help="default: the workload's")
    ns = parser.parse_args()
    logs = run.CACHE / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    workload = run.workloads([ns.workload])[0]
    tokenizer = run.tokenizer_for(workload)
    for server in ns.servers:
        measure(workload, server, tokenizer, logs, ns.prompts)


if __name__ == "__main__":
    main()
