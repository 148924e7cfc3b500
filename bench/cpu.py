"""What a server spends in CPU per output token: every process of its tree, by role.

`make bench` (bench/run.py) measures it for every server column and run: the user + system
CPU time of all the processes the server started (psutil; Ray's processes, HAProxy, replicas,
vLLM's engine core and workers included), from just before the benchmark client's run to just
after it, per 1,000 output tokens. Standing costs (Ray's controller, GCS, agents) count: they
are part of what the server costs while it serves.

    python bench/cpu.py                          # one start of each server: CPU by process
    python bench/cpu.py --workload realistic --prompts 1000 --placement own

prints, for one run of each server, every process's share of a core, its CPU milliseconds
per 1,000 output tokens and the time its threads were ready to run but waited for a CPU (the
kernel's run delay, /proc/PID/task/*/schedstat): the detail behind make bench's roles, to
pick what to profile (`py-spy top --pid PID`) and to see which process the CPU is short for.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import time
from collections import defaultdict
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The roles make bench reports, in its table's order.
ROLES = ("API server", "replica", "route picker", "engine core", "vLLM worker", "HAProxy", "Ray",
         "other")  # fmt: skip


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


# Ray's processes that are not Ray workers (those carry a `ray::` title): its binaries, its
# Python daemons by script or module, and the drivers that start it (`serve run`, this app's
# launcher).
RAY_LABELS = ("gcs_server", "raylet", "serve", "python -m serve_app",
              "python -m ray.util.client.server", "python dashboard.py", "python log_monitor.py",
              "python monitor.py", "python agent.py", "python runtime_env_agent.py")  # fmt: skip


def role(name: str) -> str:
    """The role of a process from its `label`."""
    if name.startswith("VLLM::EngineCore"):
        return "engine core"
    if name.startswith("VLLM::"):
        return "vLLM worker"
    if name.startswith("ray::ServeReplica"):  # this app's HAProxy route picker is one too
        return "route picker" if name.endswith(":RoutePicker") else "replica"
    if name == "haproxy":
        return "HAProxy"
    if name == "python -m vllm.entrypoints.openai.api_server":
        return "API server"
    if name.startswith("ray::") or name in RAY_LABELS:
        return "Ray"
    return "other"


class ProcessTree:
    """A server's processes: its first one and every process seen below it since (kept when
    re-parented, as Ray's are when the process that started them exits)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._seen: dict[int, psutil.Process] = {pid: psutil.Process(pid)}

    def processes(self) -> list[psutil.Process]:
        """The tree's processes still running, looked up afresh."""
        for process in list(self._seen.values()):
            with contextlib.suppress(psutil.Error):
                for child in process.children(recursive=True):
                    self._seen.setdefault(child.pid, child)
        return [p for p in self._seen.values() if p.is_running()]

    def cpu_seconds(self) -> dict[int, tuple[str, float]]:
        """User + system CPU seconds of each running process of the tree, with its label."""
        found = {}
        for process in self.processes():
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                found[process.pid] = (label(process), times.user + times.system)
        return found

    def run_delays(self) -> dict[int, tuple[str, float]]:
        """Seconds each running process's live threads waited, ready to run, for a CPU."""
        found = {}
        for process in self.processes():
            waited = 0.0
            for stat in Path(f"/proc/{process.pid}/task").glob("*/schedstat"):
                with contextlib.suppress(OSError, ValueError, IndexError):
                    waited += int(stat.read_text().split()[1]) / 1e9
            with contextlib.suppress(psutil.Error):
                found[process.pid] = (label(process), waited)
        return found


def spent(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[str, float]:
    """CPU seconds spent between two snapshots, by label (a process started between them
    counts from zero; one that ended counts nothing: a server's processes live through a run)."""
    used: dict[str, float] = defaultdict(float)
    for pid, (name, seconds) in after.items():
        used[name] += seconds - before.get(pid, (name, 0.0))[1]
    return dict(used)


def by_role(used: dict[str, float]) -> dict[str, float]:
    roles: dict[str, float] = defaultdict(float)
    for name, seconds in used.items():
        roles[role(name)] += seconds
    return dict(roles)


def per_1k_tokens(seconds: float, tokens: int) -> float:
    """CPU milliseconds per 1,000 output tokens."""
    return 1e6 * seconds / tokens if tokens else 0.0


def measure(workload, server: str, tokenizer: str, logs: Path, prompts: int | None) -> None:
    from bench import run

    port = run.free_port()
    start = run.SERVERS[server]
    log = logs / f"cpu-{workload.name}-{server}.log"
    with start(workload, port, log) as tree, run.ResidentClient() as client:
        run.warm_up(workload, port, tokenizer, logs, client)
        before, delays, started = tree.cpu_seconds(), tree.run_delays(), time.monotonic()
        result = run.client_run(
            client, workload, port, tokenizer, logs / "cpu.json", prompts, seed=1
        )
        after, wall = tree.cpu_seconds(), time.monotonic() - started
        waited = spent(delays, tree.run_delays())
    tokens = result["total_output_tokens"]
    used = spent(before, after)
    print(f"\n{server} ({workload.placement} session): {tokens} output tokens in {wall:.1f} s, "
          f"{result['output_throughput']:.0f} tok/s")  # fmt: skip
    print(f"{'process':<44} {'role':<12} {'% of a core':>11} {'CPU ms / 1k tok':>16} "
          f"{'waited ms / 1k tok':>19}")  # fmt: skip
    for name, seconds in sorted(used.items(), key=lambda item: -item[1]):
        if seconds >= 0.005 * wall:
            print(f"{name[:44]:<44} {role(name):<12} {100 * seconds / wall:>10.1f}% "
                  f"{per_1k_tokens(seconds, tokens):>16.0f} "
                  f"{per_1k_tokens(waited.get(name, 0.0), tokens):>19.0f}")  # fmt: skip
    total = sum(used.values())
    print(f"{'all processes':<57} {100 * total / wall:>10.1f}% "
          f"{per_1k_tokens(total, tokens):>16.0f} "
          f"{per_1k_tokens(sum(waited.values()), tokens):>19.0f}")  # fmt: skip


def main() -> None:
    from bench import run

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workload", choices=["overhead", "realistic"], default="overhead")
    servers = list(run.SERVERS)
    parser.add_argument("--servers", nargs="+", choices=servers, default=servers)
    parser.add_argument("--prompts", type=int, help="default: the workload's")
    parser.add_argument("--placement", choices=run.PLACEMENTS, default="same")
    ns = parser.parse_args()
    logs = run.CACHE / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    workload = dataclasses.replace(run.workloads([ns.workload])[0], placement=ns.placement)
    tokenizer = run.tokenizer_for(workload)
    for server in ns.servers:
        measure(workload, server, tokenizer, logs, ns.prompts)


if __name__ == "__main__":
    main()
