"""Routing across replicas: ROUTING_POLICY's columns side by side, in one run.

    make bench-routing                         # both workloads, 2 alternated rounds
    python bench/routing.py --workloads shared --rounds 3 --peer

Two replicas of the default model (MIN_REPLICAS=MAX_REPLICAS=2), each with a KV cache that holds
about half the shared workload's prefixes, driven by vLLM's own benchmark client:

- `shared`: vLLM's prefix_repetition dataset (8 prefixes of 512 tokens, each with 8 different
  suffixes of 32 tokens, shuffled), 16 output tokens, 8 concurrent;
- `random`: the random dataset (128 in, 64 out), nothing shared: what routing costs when there
  is nothing to win;
- `light` (not run by default): the random dataset one request at a time (128 in, 16 out), so
  that the time to first token is the path's own (the route picker's hop), not queueing; HAProxy
  also times each call to the route picker (RAY_SERVE_INGRESS_REQUEST_ROUTER_METRICS_ENABLED),
  shown as `router_ms`, the mean per request.

Columns, alternated: this application with ROUTING_POLICY=least_loaded (HAProxy's leastconn,
what Serve does), the same behind Serve's Python proxy instead of HAProxy (`pow2`: Serve's
power of two choices) and =prefix (the default); `--columns round_robin` adds that policy, and
`--peer` Ray Serve LLM with its PrefixCacheAffinityRouter on the same engine arguments, as Ray
ships it (Serve's Python proxy) and with its direct streaming (HAProxy asking its router, this
application's shape).
Per column: the prefix-cache hit rate of the run (the engines' own counters, read from
Ray's metrics endpoint), median and p99 TTFT, output throughput, median ITL, and the CPU the
server's processes spent per 1,000 output tokens, in all and by role (bench/cpu.py). Results: a
table on stdout and docs/benchmarks/routing.json.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import re
import statistics
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import peer, run  # noqa: E402

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
# SmolLM2-135M in float32 keeps 46,080 bytes of KV per token (30 layers, 3 KV heads of 64):
# 120 MiB hold ~2,700 tokens, about half the shared workload's 8 prefixes of 512 (4,096) with
# the running requests beside them; two replicas hold them all.
KV_CACHE_BYTES = 120 * 1024 * 1024
REPLICAS = {
    "MIN_REPLICAS": "2",
    "MAX_REPLICAS": "2",
    "KV_CACHE_MEMORY_BYTES": str(KV_CACHE_BYTES),
    "MAX_MODEL_LEN": "2048",  # vLLM refuses a KV cache that cannot hold one request of 8192
}
# vLLM copies its counters into Ray's metrics every VLLM_LOG_STATS_INTERVAL seconds.
STATS_ENV = {"VLLM_LOG_STATS_INTERVAL": "2"}
# HAProxy times its call to the route picker, into Ray's metrics (a histogram in ms).
ROUTER_TIMING_ENV = {"RAY_SERVE_INGRESS_REQUEST_ROUTER_METRICS_ENABLED": "1"}
FIGURES = ("hit_rate", "output_throughput", "median_ttft_ms", "p99_ttft_ms")


def workloads(names: list[str]) -> list[run.Workload]:
    env = {**REPLICAS, **STATS_ENV}
    found = []
    if "shared" in names:
        dataset = ("--dataset-name", "prefix_repetition",
                   "--prefix-repetition-prefix-len", "512", "--prefix-repetition-suffix-len", "32",
                   "--prefix-repetition-num-prefixes", "8",
                   "--prefix-repetition-output-len", "16")  # fmt: skip
        found.append(run.Workload("shared", MODEL, MODEL, 544, 16, 64, 8, env=env,
                                  dataset_args=dataset))  # fmt: skip
    if "random" in names:
        found.append(run.Workload("random", MODEL, MODEL, 128, 64, 64, 16, env=env))
    if "light" in names:  # one request at a time: TTFT is the path's own cost, not queueing
        timed = {**env, **ROUTER_TIMING_ENV}
        found.append(run.Workload("light", MODEL, MODEL, 128, 16, 32, 1, env=timed))
    return found


COLUMNS = {
    "leastconn": (run.our_server, {"ROUTING_POLICY": "least_loaded"}),
    # Serve's power of two choices: what its Python proxy does with several replicas (HAProxy,
    # this app's HTTP path, has leastconn instead); the engines, not the proxy, bound these runs
    "pow2": (run.our_server, {"ROUTING_POLICY": "least_loaded", "RAY_SERVE_ENABLE_HA_PROXY": "0"}),
    "round_robin": (run.our_server, {"ROUTING_POLICY": "round_robin"}),
    "prefix": (run.our_server, {"ROUTING_POLICY": "prefix"}),
}
PEER = {
    "rayllm-prefix": (
        functools.partial(run.ray_serve_llm_server, replicas=2, request_router=peer.PREFIX_ROUTER),
        {},
    ),
    "rayllm-direct-prefix": (
        functools.partial(
            run.ray_serve_llm_server,
            direct_streaming=True,
            replicas=2,
            request_router=peer.PREFIX_ROUTER,
        ),
        {},
    ),
}


def metrics_url() -> str:
    """Ray's Prometheus endpoint on this machine (the server's Ray is the newest session)."""
    (port_file,) = Path("/tmp/ray/session_latest").glob("metrics_export_port_*")
    return f"http://127.0.0.1:{port_file.read_text().strip()}/metrics"


SERIES = re.compile(r"^ray_vllm_prefix_cache_(queries|hits)(?:_total)?\{[^}]*\}\s+(\S+)", re.M)
ROUTER_MS = re.compile(
    r"^ray_serve_haproxy_ingress_router_latency_ms_(sum|count)\{[^}]*\}\s+(\S+)", re.M
)
DECISIONS = re.compile(
    r"^ray_serve_app_routing_decisions(?:_total)?\{[^}]*reason=\"(\w+)\"[^}]*\}\s+(\S+)", re.M
)


def counters() -> dict[str, float]:
    """Prompt tokens all engines looked up in their prefix caches and found, from Ray's
    metrics (vLLM's counters); this application's routing decisions, as `reason:<name>`; and
    the time HAProxy spent asking the route picker, as `router:sum` and `router:count`."""
    totals = {"queries": 0.0, "hits": 0.0}
    with contextlib.suppress(httpx.HTTPError, ValueError):
        text = httpx.get(metrics_url(), timeout=10).text
        for kind, value in SERIES.findall(text):
            totals[kind] += float(value)
        for kind, value in ROUTER_MS.findall(text):
            totals[f"router:{kind}"] = totals.get(f"router:{kind}", 0.0) + float(value)
        for reason, value in DECISIONS.findall(text):
            totals[f"reason:{reason}"] = totals.get(f"reason:{reason}", 0.0) + float(value)
    return totals


def settled_counters(timeout_s: float = 60.0) -> dict[str, float]:
    """The counters once two readings 4 s apart agree (vLLM and Ray's agent copy them
    periodically), or the last reading after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last = counters()
    while time.monotonic() < deadline:
        time.sleep(4)
        now = counters()
        if now == last and now["queries"] > 0:
            return now
        last = now
    return last


def measure(
    workload: run.Workload, columns: dict, rounds: int, logs: Path
) -> dict[str, list[dict[str, float]]]:
    tokenizer = run.tokenizer_for(workload)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in columns}
    with run.ResidentClient() as client:
        for index in range(rounds):
            for name, (start, env) in columns.items():
                served = dataclasses.replace(workload, env={**workload.env, **env})
                port = run.free_port()
                log = logs / f"routing-{workload.name}-{name}-{index}.log"
                print(f"[bench] routing {workload.name}: {name}, round {index + 1}/{rounds}",
                      flush=True)  # fmt: skip
                with start(served, port, log) as server:
                    run.warm_up(served, port, tokenizer, logs, client)
                    for sample in range(served.samples):
                        before = settled_counters()
                        result = logs / f"{log.stem}-{sample}.json"
                        figures = run.measured_run(
                            client, server, served, port, tokenizer, result,
                            seed=1 + index * 10 + sample,
                        )  # fmt: skip
                        after = settled_counters()
                        queries = after["queries"] - before["queries"]
                        hit_rate = (after["hits"] - before["hits"]) / queries if queries else 0.0
                        row = {"hit_rate": hit_rate, **{m: figures[m] for m in FIGURES[1:]}}
                        for key in ("median_itl_ms", run.CPU, "cpu_roles"):
                            row[key] = figures[key]
                        decisions = {
                            key.removeprefix("reason:"): after[key] - before.get(key, 0.0)
                            for key in after
                            if key.startswith("reason:") and after[key] > before.get(key, 0.0)
                        }
                        asked = after.get("router:count", 0.0) - before.get("router:count", 0.0)
                        if asked:
                            spent = after["router:sum"] - before.get("router:sum", 0.0)
                            row["router_ms"] = spent / asked
                        runs[name].append({**row, "decisions": decisions})
                        shown = ", ".join(f"{m} {row[m]:.3f}" for m in FIGURES)
                        shown += f", median_itl_ms {row['median_itl_ms']:.1f}"
                        roles = {k: round(v) for k, v in row["cpu_roles"].items()}
                        shown += f", cpu_ms_per_1k_tok {row[run.CPU]:.0f} {roles}"
                        if "router_ms" in row:
                            shown += f", router_ms {row['router_ms']:.2f}"
                        print(f"[bench] {name}: {shown}, decisions {decisions}", flush=True)
    return runs


def table(workload: str, runs: dict[str, list[dict[str, float]]]) -> str:
    base = {m: statistics.median(r[m] for r in runs["leastconn"]) for m in FIGURES}
    lines = [
        f"### {workload}",
        "",
        "| column | prefix-cache hit rate | output tok/s | median TTFT ms | p99 TTFT ms |",
        "|---|---|---|---|---|",
    ]
    for name, rs in runs.items():
        med = {m: statistics.median(r[m] for r in rs) for m in FIGURES}
        cells = [f"{med['hit_rate']:.1%}"]
        for m in FIGURES[1:]:
            ratio = med[m] / base[m] if base[m] else float("nan")
            cells.append(f"{med[m]:.0f} ({ratio:.2f}x)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workloads", nargs="+", default=["shared", "random"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--samples", type=int, default=1, help="client runs per start")
    parser.add_argument("--columns", nargs="+", choices=sorted(COLUMNS | PEER),
                        default=["leastconn", "pow2", "prefix"])  # fmt: skip
    parser.add_argument("--peer", action="store_true", help="and Ray Serve LLM's prefix router")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "routing.json")
    ns = parser.parse_args()
    logs = run.CACHE / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    chosen = ["leastconn", *ns.columns, *(PEER if ns.peer else ())]
    columns = {name: (COLUMNS | PEER)[name] for name in dict.fromkeys(chosen)}
    if set(columns) & set(PEER):
        try:  # Ray Serve LLM's routers import pyarrow, which Ray does not install
            import pyarrow  # noqa: F401
        except ImportError:
            parser.error("Ray Serve LLM's routers need pyarrow: make bench-routing installs it")
    started = time.strftime("%Y-%m-%d %H:%M")
    results = {}
    for workload in workloads(ns.workloads):
        workload = dataclasses.replace(workload, samples=ns.samples)
        results[workload.name] = measure(workload, columns, ns.rounds, logs)
        print(table(workload.name, results[workload.name]), flush=True)
    command = "python bench/routing.py " + " ".join(sys.argv[1:])
    ns.out.write_text(json.dumps({"date": started, "command": command, "runs": results}, indent=1))
    for name, runs in results.items():
        print("\n" + table(name, runs))


if __name__ == "__main__":
    main()
