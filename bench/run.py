"""Benchmark this application against vLLM's own OpenAI server, side by side, in one run.

    make bench                       # both workloads, both placements, 3 alternated rounds
    python bench/run.py --workloads overhead --placements own
    python bench/run.py --workloads overhead --rounds 5 --samples 5
    python bench/run.py --peer       # and Ray Serve LLM as a third column (bench/peer.py)
    python bench/run.py --peer rayllm rayllm-direct   # as Ray ships it, and direct streaming

For each workload the same model is served with the same engine arguments (the `vllm serve`
arguments this application derives from its environment, `plan`'s `vllm_argv`) by (a) vLLM's
own server and (b) this application (`serve run`), one at a time, alternating, and each is
driven by vLLM's own benchmark client (`vllm.benchmarks.serve`: random dataset, streaming chat
completions, `ignore_eos`), in both placements: in the client's session and in a session of
their own (`--placements`). Each run also records the CPU the server's processes spent per
1,000 output tokens, in all and by role (bench/cpu.py). The RunPod job path (`/runsync`,
`/stream`) of this application is measured too. Results: a table on stdout,
docs/benchmarks/results.json, a plot, and the table in docs/benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import itertools
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import cpu, jobs, peer, report  # noqa: E402
from serve_app.config.plan import build_plan  # noqa: E402
from serve_app.engine import args as vllm_args  # noqa: E402
from serve_app.engine import vllm_engine  # noqa: E402

CACHE = ROOT / ".cache" / "bench"
START_TIMEOUT_S = 900
METRICS = ("output_throughput", "median_ttft_ms", "p99_ttft_ms", "median_tpot_ms",
           "median_itl_ms", "p99_itl_ms", "longest_pause_ms", "paused_ms",
           "tokens_per_chunk", "chunks_per_delivery")  # fmt: skip
# Beside the client's figures, each run of make bench records the CPU the server's processes
# spent per 1,000 output tokens (bench/cpu.py), in all and by role.
CPU = "cpu_ms_per_1k_tok"
RUN_METRICS = (*METRICS, CPU)
# Where a server runs: in the benchmark client's session (`same`: each process competes for the
# CPU on its own) or a session of its own (`own`: as a service manager, a container or `setsid`
# starts it; Linux's autogroup then shares the CPU between the two sessions).
PLACEMENTS = ("same", "own")


@dataclass
class Workload:
    name: str
    model: str  # MODEL_NAME (a local directory or a hub id resolved offline)
    served_name: str
    input_len: int
    output_len: int
    prompts: int
    concurrency: int
    # Client runs per server start, each counted in the medians: the overhead workload's run
    # lasts ~5 s, so a pause of the 2-core machine's moves one run by 20 %; three runs per start
    # cost ~10 s more each (a server start costs ~60 s). The realistic run lasts a minute, and
    # its median TTFT still moved by ±15 % from one to the next: two per start.
    samples: int = 1
    env: dict[str, str] = field(default_factory=dict)
    placement: str = "same"  # PLACEMENTS
    # The client's dataset arguments, instead of the random dataset of input_len/output_len.
    dataset_args: tuple[str, ...] = ()


def workloads(names: list[str]) -> list[Workload]:
    from tests.tiny_model import build_tiny_model

    found = []
    if "overhead" in names:
        tiny = build_tiny_model(CACHE / "tiny")
        found.append(Workload("overhead", str(tiny), "tiny", 64, 64, 200, 32, samples=3))
    if "realistic" in names:
        found.append(
            Workload(
                "realistic",
                "HuggingFaceTB/SmolLM2-135M-Instruct",
                "HuggingFaceTB/SmolLM2-135M-Instruct",
                128,
                64,
                64,
                16,
                samples=2,
            )
        )
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MODEL_"))}


def app_env(workload: Workload) -> dict[str, str]:
    env = {**base_env(), "MODEL_NAME": workload.model, "BASE_PATH": str(CACHE / "base")}
    if workload.served_name != workload.model:
        env["OPENAI_SERVED_MODEL_NAME_OVERRIDE"] = workload.served_name
    return {**env, **workload.env}


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Within the block, SIGTERM (`timeout`, `kill`) ends this process as SystemExit, so the
    `finally` blocks that stop its servers run, as they do on Ctrl-C; Python's default would
    end it at once and leave them running. Only from the main thread, where Python handles
    signals, and only where SIGTERM has its default action."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _sigint_stops() -> None:
    """In the server, before it starts: SIGINT stops it even when this process was started
    with SIGINT ignored (nohup, a background job, some CI runners), which a child inherits."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextlib.contextmanager
def running(
    command: list[str], env: dict[str, str], health_url: str, log: Path, placement: str = "same"
) -> Iterator[cpu.ProcessTree]:
    """Run a server until the block ends (the block gets its process tree); every process it
    started is stopped after, also when this process is stopped by SIGINT or SIGTERM.

    `same`: the server gets its own process group (to stop it) but stays in this session,
    where each of its processes competes for the CPU on its own. `own`: a session of its own;
    Linux's autogroup scheduler then shares the CPU between the sessions, not the processes (a
    server there starved the benchmark client for 0.2-5 s at a time on two cores, whichever
    server it was: docs/benchmarks, decision 9)."""
    if placement not in PLACEMENTS:
        raise ValueError(f"placement {placement!r}: expected one of {PLACEMENTS}")
    where = {"start_new_session": True} if placement == "own" else {"process_group": 0}
    with sigterm_as_exit(), open(log, "w") as out:
        process = subprocess.Popen(
            command, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            preexec_fn=_sigint_stops, **where,
        )  # fmt: skip
        tree = cpu.ProcessTree(process.pid)
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                tree.processes()
                if process.poll() is not None:
                    raise RuntimeError(f"server exited ({process.returncode}); see {log}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(health_url, timeout=5).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"server not healthy after {START_TIMEOUT_S} s; see {log}")
                time.sleep(2)
            yield tree
        finally:
            alive = tree.processes()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
            alive = [p for p in alive if p.is_running()]
            for proc in alive:
                with contextlib.suppress(psutil.Error):
                    proc.terminate()
            _, left = psutil.wait_procs(alive, timeout=20)
            for proc in left:
                with contextlib.suppress(psutil.Error):
                    proc.kill()


@dataclass(frozen=True)
class Engine:
    """What this application's plan gives the workload's engine: the vLLM arguments (`model`
    a local path), and the environment variables the replica runs with."""

    options: dict[str, Any]
    env_vars: dict[str, str]


def engine_for(workload: Workload) -> Engine:
    """The engine arguments of the plan, the model as a local path (`engine_options`). The
    tool-call parser a replica chooses runs only on requests with tools, so without one the
    other servers do what a replica does on the benchmark's chat requests."""
    model = build_plan(app_env(workload), engine_args=vllm_args).models[0]
    options = vllm_engine.engine_options(model.model_copy(update={"choose_tool_parser": False}))
    return Engine(options, dict(model.env_vars))


def serve_config_file(config: dict[str, Any]) -> Path:
    """`config` written where `serve run` can read it: a directory of its own per start."""
    path = Path(tempfile.mkdtemp(prefix="bench-")) / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def vllm_server(workload: Workload, port: int, log: Path):
    """vLLM's own OpenAI server with the arguments this application would give the engine."""
    engine = engine_for(workload)
    argv = vllm_args.to_argv(engine.options)
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", *argv,
               "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    env = {**base_env(), **engine.env_vars}
    return running(command, env, f"http://127.0.0.1:{port}/health", log, workload.placement)


def ray_serve_llm_server(
    workload: Workload,
    port: int,
    log: Path,
    direct_streaming: bool = False,
    replicas: int = 1,
    request_router: str | None = None,
):
    """Ray Serve LLM with the same engine arguments, as Ray ships it, or with its direct
    streaming (bench/peer.py). Healthy once its ingress answers; the warm-up waits for its
    engine."""
    engine = engine_for(workload)
    config = peer.app_config(
        workload.served_name, engine.options, port, direct_streaming, replicas, request_router
    )
    serve = str(Path(sys.executable).parent / "serve")
    own = {k: v for k, v in engine.env_vars.items() if not k.startswith("RAY_")}  # Ray's defaults
    if direct_streaming:
        own |= peer.DIRECT_STREAMING_ENV
        if request_router:  # a router that reads the prompt needs HAProxy to forward it
            own["RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY"] = "1"
    command = [serve, "run", str(serve_config_file(config))]
    url = f"http://127.0.0.1:{port}/v1/models"
    return running(command, {**base_env(), **own}, url, log, workload.placement)


def our_server(workload: Workload, port: int, log: Path):
    """This application, as `make serve` runs it (`serve run` of serve_config.yaml)."""
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    config["http_options"] = {"host": "127.0.0.1", "port": port}
    command = [sys.executable, "-m", "serve_app", "serve", str(serve_config_file(config))]
    url = f"http://127.0.0.1:{port}/health"
    return running(command, app_env(workload), url, log, workload.placement)


def our_server_past_haproxy(workload: Workload, port: int, log: Path):
    """This app with the client on its replica's own HTTP port (Serve's direct ingress), past
    HAProxy, which listens elsewhere: what HAProxy's hop costs. One replica only."""
    env = {"RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(port),
           "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(port + 1)}  # fmt: skip
    return our_server(dataclasses.replace(workload, env={**workload.env, **env}), free_port(), log)


def client_args(
    workload: Workload,
    port: int,
    tokenizer: str,
    result: Path,
    prompts: int | None = None,
    seed: int = 0,
) -> list[str]:
    """The arguments of one run of vLLM's benchmark client (`vllm bench serve`). The random
    prompts follow `seed`: runs against one server start need seeds of their own, or a run
    repeats prompts whose prefix vLLM has cached (on by default), and their prefill is skipped:
    the realistic workload's median TTFT fell from 4.5 to 1.2 s on a repeat. Every server gets
    the same seeds in the same order, so both answer the same prompts."""
    return [
        "--backend", "openai-chat", "--endpoint", "/v1/chat/completions",
        "--base-url", f"http://127.0.0.1:{port}", "--model", workload.served_name,
        "--tokenizer", tokenizer,
        *(workload.dataset_args or (
            "--dataset-name", "random", "--random-input-len", str(workload.input_len),
            "--random-output-len", str(workload.output_len),
        )),
        "--num-prompts", str(prompts or workload.prompts),
        "--max-concurrency", str(workload.concurrency),
        "--ignore-eos", "--percentile-metrics", "ttft,tpot,itl", "--metric-percentiles", "50,99",
        "--save-result", "--save-detailed",
        "--result-dir", str(result.parent), "--result-filename", result.name,
        "--disable-tqdm", "--seed", str(seed),
    ]  # fmt: skip


CLIENT_CODE = (
    "import sys\n"
    "from vllm.benchmarks.serve import add_cli_args, main\n"
    "from vllm.utils.argparse_utils import FlexibleArgumentParser\n"
    "def run(argv):\n"
    "    parser = FlexibleArgumentParser()\n    add_cli_args(parser)\n"
    "    main(parser.parse_args(argv))\n"
)


def read_result(result: Path) -> dict[str, Any]:
    figures = json.loads(result.read_text())
    return {**figures, **pauses(figures), **deliveries(figures)}


DONE = "[bench] client run done"


class ResidentClient:
    """vLLM's benchmark client in one process for many runs: imported once, so a run takes
    the seconds of its requests, not the ~10 s of a fresh client's imports, and the CPU a
    server spends during a run is the CPU of the run. It runs in this session."""

    def __init__(self) -> None:
        loop = (
            f"for line in sys.stdin:\n    run(json.loads(line))\n    print({DONE!r}, flush=True)\n"
        )
        self._process = subprocess.Popen(
            [sys.executable, "-c", "import json\n" + CLIENT_CODE + loop],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, cwd=ROOT, env=base_env(),
        )  # fmt: skip

    def run(self, args: list[str]) -> None:
        assert self._process.stdin and self._process.stdout
        self._process.stdin.write(json.dumps(args) + "\n")
        self._process.stdin.flush()
        for line in self._process.stdout:
            if line.strip() == DONE:
                return
        raise RuntimeError(f"the benchmark client exited ({self._process.wait()})")

    def close(self) -> None:
        if self._process.stdin:
            self._process.stdin.close()
        try:
            self._process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=10)

    def __enter__(self) -> ResidentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def client_run(
    client: ResidentClient,
    workload: Workload,
    port: int,
    tokenizer: str,
    result: Path,
    prompts: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """One run of vLLM's benchmark client; its result JSON, with the pauses."""
    client.run(client_args(workload, port, tokenizer, result, prompts, seed))
    return read_result(result)


def measured_run(
    client: ResidentClient,
    server: cpu.ProcessTree,
    workload: Workload,
    port: int,
    tokenizer: str,
    result: Path,
    seed: int,
) -> dict[str, Any]:
    """One run of the client with the CPU the server's processes spent during it: the run's
    figures (RUN_METRICS) and `cpu_roles`, CPU ms per 1,000 output tokens by role."""
    before = server.cpu_seconds()
    figures = client_run(client, workload, port, tokenizer, result, seed=seed)
    roles = cpu.by_role(cpu.spent(before, server.cpu_seconds()))
    tokens = figures["total_output_tokens"]
    per_role = {role: cpu.per_1k_tokens(seconds, tokens) for role, seconds in roles.items()}
    return {**{m: figures[m] for m in METRICS}, CPU: sum(per_role.values()), "cpu_roles": per_role}


def _gaps_s(figures: dict[str, Any]) -> list[float]:
    """The times between one token and the next of all the run's streams together (from the
    client's per-token timestamps, `--save-detailed`), from the first token on."""
    arrivals = []
    for start, ttft, itls in zip(
        figures["start_times"], figures["ttfts"], figures["itls"], strict=True
    ):
        arrival = start + ttft
        arrivals.append(arrival)
        for itl in itls:
            arrival += itl
            arrivals.append(arrival)
    arrivals.sort()
    return [b - a for a, b in itertools.pairwise(arrivals)]


def pauses(figures: dict[str, Any]) -> dict[str, float]:
    """The run's stalls of the whole server, from the gaps between its tokens (computed once):

    - `longest_pause_ms`: the longest time, after the first token, in which no stream of the
      run received one (a stall of the whole server, or of the client's reading, which
      per-stream ITLs hide);
    - `paused_ms`: how long, in all, no stream received a token for longer than
      report.PAUSE_ITLS median ITLs: the run's time lost to stalls, as after a burst of new
      requests (docs/benchmarks, decision 23). Where tokens arrive in batches (median ITL 0), every
      gap between batches counts.
    """
    gaps = _gaps_s(figures)
    threshold_s = report.PAUSE_ITLS * figures["median_itl_ms"] / 1000
    return {
        "longest_pause_ms": 1000 * max(gaps, default=0.0),
        "paused_ms": 1000 * sum(gap for gap in gaps if gap > threshold_s),
    }


def deliveries(figures: dict[str, Any]) -> dict[str, float]:
    """How the run's streams reached the client, from its per-chunk timestamps:

    - `tokens_per_chunk`: output tokens per streamed chunk (an SSE event carrying a choice; a
      chat stream's first, with the role only, counts too): about 1 where each chunk carries one
      token, more where the server merges a stream's tokens into one chunk;
    - `chunks_per_delivery`: a stream's chunks per read of the client (chunks arriving less
      than report.DELIVERY_MS apart): 1 for a stream that arrives token by token, more where
      chunks are held back and then sent in bunches (a median ITL of 0).
    """
    streams = [
        (tokens, itls)
        for tokens, ttft, itls in zip(
            figures["output_lens"], figures["ttfts"], figures["itls"], strict=True
        )
        if ttft
    ]
    chunks = sum(len(itls) + 1 for _, itls in streams)
    reads = sum(1 + sum(gap >= report.DELIVERY_MS / 1000 for gap in itls) for _, itls in streams)
    return {
        "tokens_per_chunk": sum(tokens for tokens, _ in streams) / chunks if chunks else 0.0,
        "chunks_per_delivery": chunks / reads if reads else 0.0,
    }


SERVERS = {"vllm": vllm_server, "ours": our_server}
# The optional columns (`--peer [NAME ...]`): Ray's own LLM library on the same workload, as
# Ray ships it and with its direct streaming.
PEERS = {
    "rayllm": ray_serve_llm_server,
    "rayllm-direct": functools.partial(ray_serve_llm_server, direct_streaming=True),
}


def tokenizer_for(workload: Workload) -> str:
    """The local directory of the workload's model, for the benchmark client's tokenizer."""
    return engine_for(workload).options["model"]


def warm_up(
    workload: Workload, port: int, tokenizer: str, logs: Path, client: ResidentClient
) -> None:
    """One request per concurrent slot (seed 0; measured runs use 1, 2, ...), results discarded."""
    client_run(client, workload, port, tokenizer, logs / "warmup.json", workload.concurrency)


Start = Callable[[Workload, int, Path], contextlib.AbstractContextManager[cpu.ProcessTree]]


def alternate(
    workload: Workload,
    servers: dict[str, tuple[Start, dict[str, str]]],
    rounds: int,
    logs: Path,
    after_runs: Callable[[str, int, str, Workload], None] | None = None,
) -> dict[str, list[dict[str, float]]]:
    """`rounds` alternated starts of each named server (a start function and the variables it
    adds to the workload's environment), warmed up, then `workload.samples` client runs per
    start; each run's metrics, by server. `after_runs(name, round, url, workload)` runs while
    the server is still up. Each run also records the CPU the server spent (`measured_run`)."""
    tokenizer = tokenizer_for(workload)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
    with ResidentClient() as client:
        for index in range(rounds):
            for name, (start, env) in servers.items():
                served = dataclasses.replace(workload, env={**workload.env, **env})
                port = free_port()
                log = logs / f"{workload.name}-{workload.placement}-{name}-{index}.log"
                print(f"[bench] {workload.name} ({workload.placement} session): {name}, "
                      f"round {index + 1}/{rounds}", flush=True)  # fmt: skip
                with start(served, port, log) as tree:
                    warm_up(served, port, tokenizer, logs, client)
                    for sample in range(workload.samples):
                        result = logs / f"{log.stem}-{sample}.json"
                        figures = measured_run(
                            client, tree, served, port, tokenizer, result, seed=1 + sample
                        )
                        runs[name].append({"round": index, **figures})
                        print(f"[bench] {name}: " + ", ".join(
                            f"{m} {figures[m]:.1f}" for m in RUN_METRICS), flush=True)  # fmt: skip
                    if after_runs:
                        after_runs(name, index, f"http://127.0.0.1:{port}", served)
    return runs


def add_variant_option(parser: argparse.ArgumentParser) -> None:
    """`--variant NAME VAR=VALUE ...`, repeatable: this app again with variables added."""
    parser.add_argument(
        "--variant", nargs="+", action="append", default=[], metavar=("NAME", "VAR=VALUE"),
        help="a name and the variables it adds (repeat for several variants)",
    )  # fmt: skip


def variants_of(ns: argparse.Namespace) -> dict[str, dict[str, str]]:
    """{name: {variable: value}} of the `--variant` options given."""
    return {name: dict(pair.split("=", 1) for pair in pairs) for name, *pairs in ns.variant}


def medians(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Each server's median of every metric its runs have, and of each role's CPU
    (`cpu_roles`; a role a run lacks counts 0 there)."""
    found: dict[str, dict[str, Any]] = {}
    for server, rs in runs.items():
        found[server] = {m: statistics.median(r[m] for r in rs) for m in RUN_METRICS if m in rs[0]}
        if "cpu_roles" in rs[0]:
            roles = {role for r in rs for role in r["cpu_roles"]}
            found[server]["cpu_roles"] = {
                role: statistics.median(r["cpu_roles"].get(role, 0.0) for r in rs)
                for role in sorted(roles, key=cpu.ROLES.index)
            }
    return found


def run_workload(
    workload: Workload, rounds: int, logs: Path, peers: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Both servers (and the `peers` named) alternated (medians over all runs of each), and
    this app's RunPod job path measured once, after its first start's runs in the client's
    session (`same` placement)."""
    job_runs: list[dict[str, Any]] = []

    def measure_jobs(name: str, index: int, url: str, served: Workload) -> None:
        if name == "ours" and index == 0 and served.placement == "same":
            job_runs.append(jobs.measure(url, served))

    starts = SERVERS | {name: PEERS[name] for name in peers}
    servers = {name: (start, {}) for name, start in starts.items()}
    runs = alternate(workload, servers, rounds, logs, measure_jobs)
    return {"workload": vars(workload), "runs": runs, "medians": medians(runs), "jobs": job_runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workloads", nargs="+", default=["overhead", "realistic"])
    parser.add_argument(
        "--rounds", type=int, default=3,
        help="alternated starts of each server; the table shows the medians of their runs",
    )  # fmt: skip
    parser.add_argument(
        "--samples", type=int, help="client runs per start (default: overhead 3, realistic 2)"
    )
    parser.add_argument(
        "--peer", nargs="*", choices=sorted(PEERS), metavar="NAME",
        help="more columns: Ray Serve LLM (ray.serve.llm) on the same workload, as Ray ships it "
        "(rayllm, the default) and with its direct streaming (rayllm-direct); bench/peer.py",
    )  # fmt: skip
    parser.add_argument(
        "--placements", nargs="+", choices=PLACEMENTS, default=list(PLACEMENTS),
        help="where the servers run: in the client's session (same) and/or one of their own "
        "(own); each workload is measured in each",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    ns = parser.parse_args()
    report.check_plotting()
    logs = CACHE / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M")
    chosen = workloads(ns.workloads)
    if ns.samples:
        chosen = [dataclasses.replace(w, samples=ns.samples) for w in chosen]
    peers = () if ns.peer is None else tuple(ns.peer or ["rayllm"])
    results = [
        run_workload(dataclasses.replace(w, placement=placement), ns.rounds, logs, peers)
        for w in chosen
        for placement in ns.placements
    ]
    command = "python bench/run.py " + " ".join(sys.argv[1:]) if sys.argv[1:] else "make bench"
    report.write(results, ns.out, command=command, date=started)


if __name__ == "__main__":
    main()
