"""Try a setting before adopting it: vLLM's own server, this app, and this app with extra
environment variables, alternated on one workload; each run's figures, then medians and ratios.

    python bench/variants.py realistic --rounds 3 --variant nice0 RAY_worker_niceness=0
    python bench/variants.py overhead --placement own --variant free ENGINE_CORE_ON_WORKER_CPUS=0
    python bench/variants.py overhead --placement own --past-haproxy

Each variant is this application started as bench/run.py starts it, with the given variables
added to its environment (read by Ray where `serve run` starts it, and by the application).
Nothing is written under docs/; the JSON of every run lands in .cache/bench/variants/.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import report, run  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("workload", choices=["overhead", "realistic"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--samples", type=int, help="client runs per start (default: overhead 3, realistic 2)"
    )
    parser.add_argument("--placement", choices=run.PLACEMENTS, default="same")
    run.add_variant_option(parser)
    parser.add_argument(
        "--past-haproxy", action="store_true",
        help="one more column, `direct`: the client on the app's replica's own port, past HAProxy",
    )  # fmt: skip
    ns = parser.parse_args()
    variants = run.variants_of(ns)
    out = run.CACHE / "variants"
    out.mkdir(parents=True, exist_ok=True)
    base = dataclasses.replace(run.workloads([ns.workload])[0], placement=ns.placement)
    if ns.samples:
        base = dataclasses.replace(base, samples=ns.samples)
    servers = {"vllm": (run.vllm_server, {}), "ours": (run.our_server, {})} | {
        name: (run.our_server, env) for name, env in variants.items()
    }
    if ns.past_haproxy:
        servers["direct"] = (run.our_server_past_haproxy, {})
    runs = run.alternate(base, servers, ns.rounds, out)
    (out / f"{ns.workload}-{ns.placement}-runs.json").write_text(json.dumps(runs, indent=1))
    medians = run.medians(runs)
    theirs = medians["vllm"]
    for name, med in medians.items():
        ratios = ", ".join(
            f"{m} {med[m]:.1f} ({report.ratio(med[m], theirs[m])})" for m in run.RUN_METRICS
        )
        print(f"[variants] median {name}: {ratios}")
        roles = ", ".join(f"{role} {ms:.0f}" for role, ms in med["cpu_roles"].items())
        print(f"[variants] {name}: CPU ms per 1,000 output tokens by role: {roles}")


if __name__ == "__main__":
    main()
