"""The benchmark's outputs: a table on stdout, results.json, a plot, and the latest table in
docs/benchmarks/README.md (between markers; the rest of that file is written by hand)."""

from __future__ import annotations

import importlib.util
import json
import textwrap
from pathlib import Path
from typing import Any

from bench.cpu import ROLES

START = "<!-- results:start (written by bench/run.py) -->"
END = "<!-- results:end -->"
# A gap between two tokens of all streams, longer than this many of the run's median ITL, is
# a pause (bench/run.py's pauses).
PAUSE_ITLS = 4
# Two chunks of one stream that reach the client less than this apart came in one read (bench/
# run.py's deliveries); otherwise they are at least an engine step, a few ms, apart.
DELIVERY_MS = 1
ROWS = [
    ("output_throughput", "output tok/s", "{:.0f}", "ratio"),
    ("median_ttft_ms", "median TTFT (ms)", "{:.0f}", "delta"),
    ("p99_ttft_ms", "p99 TTFT (ms)", "{:.0f}", "delta"),
    ("median_tpot_ms", "median TPOT (ms)", "{:.1f}", "ratio"),
    ("median_itl_ms", "median ITL (ms)", "{:.1f}", "ratio"),
    ("p99_itl_ms", "p99 ITL (ms)", "{:.1f}", "ratio"),
    ("longest_pause_ms", "longest pause of all streams (ms)", "{:.0f}", "delta"),
    (
        "paused_ms",
        f"time all streams paused, over {PAUSE_ITLS} median ITLs (ms per run)",
        "{:.0f}",
        "delta",
    ),
    ("tokens_per_chunk", "output tokens per streamed chunk", "{:.2f}", "ratio"),
    (
        "chunks_per_delivery",
        f"chunks per read of the client (a stream's chunks under {DELIVERY_MS} ms apart)",
        "{:.2f}",
        "ratio",
    ),
    (
        "cpu_ms_per_1k_tok",
        "CPU of all the server's processes per 1,000 output tokens (ms)",
        "{:.0f}",
        "ratio",
    ),
]
# How each placement (bench/run.py's PLACEMENTS) reads in a table's title.
PLACEMENTS = {
    "same": "servers in the benchmark client's session",
    "own": "servers in a session of their own",
}


# The servers a table can show, in column order, by the names bench/run.py gives them;
# `vllm` is the reference every other column is compared with.
NAMES = {
    "vllm": "vLLM's server",
    "ours": "this app",
    "rayllm": "Ray Serve LLM",
    "rayllm-direct": "Ray Serve LLM, direct streaming",
}
SHORT = {**NAMES, "vllm": "vLLM's"}  # in the sentence of each run's figures


def _servers(medians: dict[str, Any]) -> list[str]:
    return [name for name in NAMES if name in medians]


def _compare(ours: float, theirs: float, kind: str) -> str:
    if kind == "delta":
        return f"{ours - theirs:+.0f} ms"
    return ratio(ours, theirs)


def ratio(ours: float, theirs: float) -> str:
    """`ours` as a multiple of `theirs` (n/a where theirs is 0: a run without pauses)."""
    return f"{ours / theirs:.2f}x" if theirs else "n/a"


def _by_start(runs: list[dict[str, float]]) -> list[list[dict[str, float]]]:
    """A server's runs grouped by the start (round) they ran in, in order."""
    starts: dict[float, list[dict[str, float]]] = {}
    for run in runs:
        starts.setdefault(run["round"], []).append(run)
    return list(starts.values())


def _each_run(runs: dict[str, list[dict[str, float]]]) -> str:
    """The runs behind the medians, in the order they ran (the spread is part of the result);
    the runs of one server start are bracketed, the starts separated by slashes."""

    def figures(server: str, key: str) -> str:
        starts = [[f"{run[key]:.0f}" for run in start] for start in _by_start(runs[server])]
        return " / ".join(v[0] if len(v) == 1 else f"[{', '.join(v)}]" for v in starts)

    def each(key: str) -> str:
        return ", ".join(f"{SHORT[name]} {figures(name, key)}" for name in _servers(runs))

    return (
        f"Each run, output tok/s: {each('output_throughput')}; "
        f"median TTFT (ms): {each('median_ttft_ms')}."
    )


def table(results: list[dict[str, Any]]) -> str:
    """One table per workload, its placements side by side (their columns suffixed with the
    placement where there are several), then each placement's runs, CPU by role and jobs."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for result in results:
        groups.setdefault(result["workload"]["name"], []).append(result)
    lines = []
    for group in groups.values():
        lines += _workload(group)
    return "\n".join(lines)


def _placement(result: dict[str, Any]) -> str:
    return result["workload"].get("placement", "same")


def _workload(group: list[dict[str, Any]]) -> list[str]:
    several = len(group) > 1
    w, runs = group[0]["workload"], group[0]["runs"]["vllm"]
    starts = len(_by_start(runs))
    where = "" if several else f", {PLACEMENTS[_placement(group[0])]}"
    each = " in each placement" if several else ""
    lines = [
        f"**{w['name']}**{where}: `{w['served_name']}`, {w['input_len']} in / "
        f"{w['output_len']} out tokens, {w['prompts']} prompts, {w['concurrency']} concurrent "
        f"(medians of {len(runs)} runs of each server{each}: {starts} alternated starts, "
        f"{len(runs) // starts} {'run' if len(runs) == starts else 'runs'} each)",
        "",
    ]
    if several:
        lines += [
            "Placements: "
            + "; ".join(f"`{_placement(r)}`, {PLACEMENTS[_placement(r)]}" for r in group)
            + ".",
            "",
        ]
    header = []
    for result in group:
        suffix = f" ({_placement(result)})" if several else ""
        servers = _servers(result["medians"])
        header += [NAMES[n] + suffix for n in servers]
        header += [f"{NAMES[n]} / vLLM{suffix}" for n in servers[1:]]
    lines += ["| metric | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    for key, label, fmt, kind in ROWS:
        if any(key not in r["medians"]["vllm"] for r in group):  # a run from before the figure
            continue
        cells = []
        for result in group:
            medians = result["medians"]
            servers = _servers(medians)
            cells += [fmt.format(medians[n][key]) for n in servers]
            cells += [_compare(medians[n][key], medians["vllm"][key], kind) for n in servers[1:]]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for result in group:
        prefix = f"`{_placement(result)}`: " if several else ""
        lines += ["", prefix + _each_run(result["runs"])]
    if all("cpu_roles" in r["medians"]["vllm"] for r in group):
        lines += ["", *cpu_table(group)]
    for result in group:
        for job in result["jobs"]:
            lines += ["", *_job_table(job)]
    lines.append("")
    return lines


def _job_table(job: dict[str, Any]) -> list[str]:
    sync = job["runsync"]
    lines = [
        f"RunPod job path of this app ({job['jobs']} jobs, {job['concurrency']} concurrent, in "
        "the client's session; `/stream` polled every second as the `runpod` SDK does, and "
        "every 50 ms):",
        "",
        "| path | jobs/s | output tok/s | median latency (ms) | p99 latency (ms) |",
        "|---|---|---|---|---|",
        f"| `/runsync` | {sync['jobs_per_s']:.1f} | {sync['output_tokens_per_s']:.0f} | "
        f"{sync['median_latency_ms']:.0f} | {sync['p99_latency_ms']:.0f} |",
    ]
    for stream in job["stream"]:
        lines.append(
            f"| `/run` + `/stream` every {_interval(stream['poll_s'])} (first output "
            f"after {stream['median_first_output_ms']:.0f} ms) | "
            f"{stream['jobs_per_s']:.1f} | {stream['output_tokens_per_s']:.0f} | "
            f"{stream['median_latency_ms']:.0f} | {stream['p99_latency_ms']:.0f} |"
        )
    return lines


def cpu_table(group: list[dict[str, Any]]) -> list[str]:
    """CPU milliseconds per 1,000 output tokens by process role (bench/cpu.py's ROLES), one
    column per server (and placement, where there are several): where each spends it."""

    def name(server: str, result: dict[str, Any]) -> str:
        return f"{NAMES[server]} ({_placement(result)})" if len(group) > 1 else NAMES[server]

    columns = [
        (result["medians"][n]["cpu_roles"], name(n, result))
        for result in group
        for n in _servers(result["medians"])
    ]
    roles = [r for r in ROLES if any(r in spent for spent, _ in columns)]
    lines = [
        "CPU per 1,000 output tokens by process role (ms, medians of the runs):",
        "",
        "| role | " + " | ".join(name for _, name in columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for role in roles:
        cells = [f"{spent.get(role, 0.0):.0f}" for spent, _ in columns]
        lines.append(f"| {role} | " + " | ".join(cells) + " |")
    return lines


def _interval(seconds: float) -> str:
    return f"{seconds:g} s" if seconds >= 1 else f"{seconds * 1000:.0f} ms"


COLORS = {"vllm": "#888888", "ours": "#3366cc", "rayllm": "#cc8833", "rayllm-direct": "#cc5533"}


def check_plotting() -> None:
    """Exit, saying what to do, where the plot could not be drawn: before the runs, not after
    an hour of them."""
    if importlib.util.find_spec("matplotlib") is None:
        raise SystemExit(
            "bench/run.py draws its plot with matplotlib, of the project's `bench` extra: run "
            'it as `make bench BENCH_ARGS="..."`, which installs the extra, once'
        )


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("output_throughput", "output tok/s"), ("median_ttft_ms", "median TTFT (ms)"),
            ("median_tpot_ms", "median TPOT (ms)")]  # fmt: skip
    fig, axes = plt.subplots(len(results), len(keys), figsize=(4 * len(keys), 3 * len(results)),
                             squeeze=False)  # fmt: skip
    for row, result in zip(axes, results, strict=True):
        servers = _servers(result["medians"])
        for ax, (key, label) in zip(row, keys, strict=True):
            values = [result["medians"][name][key] for name in servers]
            colors = [COLORS[name] for name in servers]
            ax.bar([textwrap.fill(NAMES[name], 10) for name in servers], values, color=colors)
            ax.tick_params(axis="x", labelsize=8)
            title = f"{result['workload']['name']} ({_placement(result)}): {label}"
            ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write(results: list[dict[str, Any]], out: Path, *, command: str, date: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    text = table(results)
    print(text)
    document = {"date": date, "command": command, "results": results}
    (out / "results.json").write_text(json.dumps(document, indent=2) + "\n")
    plot(results, out / "results.png")
    readme = out / "README.md"
    body = (
        f"{START}\nLatest run ({date}), produced by `{command}`:\n\n{text}\n"
        f"![results](results.png)\n{END}"
    )
    current = readme.read_text() if readme.exists() else f"# Benchmarks\n\n{START}\n{END}\n"
    head, _, rest = current.partition(START)
    _, _, tail = rest.partition(END)
    readme.write_text(head + body + tail)
