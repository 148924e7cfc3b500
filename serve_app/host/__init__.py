"""Host tuning: how an ingress or LLM replica uses the machine it runs on, behind one hook.

`tune` is called once by each replica: by an LLM replica once its engine runs, by the router
ingress as it starts. It sets the scheduling priority of the replica and of its engine's
processes (priority.py), puts the engine core on its workers' CPUs on vLLM's CPU backend
(worker_cpus.py), and coalesces an ingress replica's HTTP writes
(write_coalescing.py). The plan turns these on where they were measured to help, vLLM's CPU
backend (config.plan.HostTuning), and leaves them off elsewhere unless a setting asks.

May import: config, logs, and the standard library, psutil and uvicorn (nothing of the serving
path: this package changes how processes run, not what they answer).
"""

from __future__ import annotations

from serve_app.config.plan import HostTuning
from serve_app.host import priority, worker_cpus, write_coalescing
from serve_app.logs import get_logger

logger = get_logger(__name__)


def tune(tuning: HostTuning, *, engine: bool, http: bool, exclude: frozenset[int] = frozenset()):
    """Apply `tuning` to this replica: to its engine's processes (its descendants but `exclude`)
    if `engine`, to its HTTP server if `http`. Logs what it did, and warns of what it could not.
    """
    results: list[tuple[bool, str]] = []
    if http and tuning.coalesce_http_writes and write_coalescing.install():
        results.append((True, "HTTP writes coalesced per event-loop tick (COALESCE_HTTP_WRITES)"))
    if engine:
        results += _place_engine(tuning, priority.engine_pids(exclude=set(exclude)))
    for done, message in results:
        (logger.info if done else logger.warning)(message)


def _place_engine(tuning: HostTuning, engine: list[int]) -> list[tuple[bool, str]]:
    results = [priority.set_replica_niceness(tuning.replica_niceness)]
    if tuning.engine_niceness is not None:
        results.append(priority.set_engine_niceness(tuning.engine_niceness, engine))
    split = worker_cpus.plan(engine) if tuning.engine_core_on_worker_cpus else None
    if split:
        core = [pid for pid in engine if pid not in split.workers]
        worker_cpus.pin(core, split.worker_cpus)
        results.append((True, f"vLLM's engine core ({', '.join(map(str, core))}) on CPUs "
                        f"{worker_cpus.describe(split.worker_cpus)} with its workers' main "
                        "threads (ENGINE_CORE_ON_WORKER_CPUS)"))  # fmt: skip
    return results
