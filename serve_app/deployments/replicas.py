"""What Ray Serve reports about this application's LLM deployments (called from replicas).

Blocking calls to Serve's controller, each made in a thread and given CONTROLLER_TIMEOUT_S:
`states` and `counts` for the event loop; a controller that is restarting or hung must
not hold up /health or a job's status.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ray import serve

CONTROLLER_TIMEOUT_S = 5.0


async def states(names: set[str]) -> dict[str, dict[str, Any]]:
    """deployment_states, bounded: TimeoutError if the controller does not answer in time."""
    return await asyncio.wait_for(asyncio.to_thread(deployment_states, names), CONTROLLER_TIMEOUT_S)


async def counts(names: set[str]) -> dict[str, int]:
    """replica_counts, bounded: zeros if the controller does not answer in time."""
    try:
        return await asyncio.wait_for(
            asyncio.to_thread(replica_counts, names), CONTROLLER_TIMEOUT_S
        )
    except TimeoutError:
        return {"ready": 0, "initializing": 0, "unhealthy": 0}


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
