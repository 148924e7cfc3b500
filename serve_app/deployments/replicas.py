"""What Ray Serve reports about this application's LLM deployments (called from replicas).

Blocking calls to Serve's controller: run them in a thread (`asyncio.to_thread`).
"""

from __future__ import annotations

from typing import Any

from ray import serve


def _deployments() -> dict[str, Any]:
    app = serve.status().applications.get(serve.get_replica_context().app_name)
    return dict(app.deployments) if app else {}


def deployment_states(names: set[str]) -> dict[str, dict[str, Any]]:
    """Status and running replica count of the named deployments of this application."""
    return {
        name: {
            "status": str(deployment.status.value),
            "running_replicas": int(deployment.replica_states.get("RUNNING", 0)),
        }
        for name, deployment in _deployments().items()
        if name in names
    }


def replica_counts(names: set[str]) -> dict[str, int]:
    """Ready, starting and unhealthy replicas of the named deployments (zeros if unknown)."""
    counts = {"ready": 0, "initializing": 0, "unhealthy": 0}
    try:
        deployments = _deployments()
    except Exception:
        return counts
    for name, deployment in deployments.items():
        if name in names:
            states = deployment.replica_states
            counts["ready"] += states.get("RUNNING", 0)
            counts["initializing"] += states.get("STARTING", 0) + states.get("PENDING_MIGRATION", 0)
            counts["unhealthy"] += states.get("UNHEALTHY", 0)
    return counts
