"""Try a setting before adopting it: vLLM's own server, this app, and this app with extra
environment variables, alternated on one workload; each run's figures, then medians and ratios.

    python bench/variants.py realistic --rounds 3 --variant nice0 RAY_worker_niceness=0

Each variant is this application started as bench/run.py starts it, with the given variables
added to its environment (read by Ray where `serve run` starts it, and by the application).
Nothing is written under docs/; the JSON of every run lands in .cache/bench/variants/.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import run  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("workload", choices=["overhead", "realistic"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--variant", nargs="+", action="append", default=[], metavar=("NAME", "VAR=VALUE"),
        help="a name and the variables it adds (repeat for several variants)",
    )  # fmt: skip
    ns = parser.parse_args()
    variants = {"ours": {}} | {
        name: dict(pair.split("=", 1) for pair in pairs) for name, *pairs in ns.variant
    }
    out = run.CACHE / "variants"
    out.mkdir(parents=True, exist_ok=True)
    base = run.workloads([ns.workload])[0]
    tokenizer = run.tokenizer_for(base)
    runs: dict[str, list[dict[str, float]]] = {"vllm": []} | {name: [] for name in variants}
    for index in range(ns.rounds):
        for name in runs:
            extra = variants.get(name, {})
            workload = run.Workload(**{**vars(base), "env": {**base.env, **extra}})
            port = run.free_port()
            log = out / f"{ns.workload}-{name}-{index}.log"
            start = run.SERVERS["vllm" if name == "vllm" else "ours"]
            with start(workload, port, log):
                run.warm_up(workload, port, tokenizer, out)
                result = run.bench_client(workload, port, tokenizer, log.with_suffix(".json"))
            runs[name].append({m: result[m] for m in run.METRICS})
            print(f"[variants] {name}, round {index + 1}: " + ", ".join(
                f"{m} {result[m]:.1f}" for m in run.METRICS), flush=True)  # fmt: skip
    (out / f"{ns.workload}-runs.json").write_text(json.dumps(runs, indent=1))
    medians = {n: {m: statistics.median(r[m] for r in rs) for m in run.METRICS}
               for n, rs in runs.items()}  # fmt: skip
    theirs = medians["vllm"]
    for name, med in medians.items():
        ratios = ", ".join(f"{m} {med[m]:.1f} ({med[m] / theirs[m]:.2f}x)" for m in run.METRICS)
        print(f"[variants] median {name}: {ratios}")


if __name__ == "__main__":
    main()
