"""ROUTING_POLICY as a Ray Serve request router, set on every LLM deployment
(`request_router_config`): each caller of the deployment (the router ingress, the job queue,
the ingress request router in front of HAProxy) routes by it with state of its own.

Loads are Serve's queue-length cache of this caller (running and queued requests per replica,
from the replicas' own answers). A caller that only picks (the ingress request router: the
request then goes from HAProxy to the replica, not through this caller) never sees a request
finish. While it picks, it asks the replicas their loads every FRESH_S in the background, off
the requests' path, and counts what it picked since each question went out: its loads are then
upper bounds, and a replica at 0 is idle. A pick that finds no replica idle asks them first
(most likely some finished since), unless an answer came within BURST_S (one question for a
burst of picks).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Mapping
from typing import Any

from ray.serve.request_router import (
    PendingRequest,
    ReplicaID,
    RequestRouter,
    RunningReplica,
)

from serve_app.logs import get_logger
from serve_app.routing.policy import REASONS, Policy, affinity_key, routing_text

logger = get_logger(__name__)

ROUTE_ONLY = "_serve_app_route_only"  # kwarg of a pick whose request goes out of band
SESSION = "_serve_app_session"  # kwarg: the client's session header, if any
FRESH_S = 0.25  # while route-only picks come, the replicas are asked their loads this often
IDLE_S = 2.0  # and for this long after the last one
BURST_S = 0.01  # a pick that finds no replica idle asks them first, unless answered this recently
PROBE_TIMEOUT_S = 1.0
KV_CACHE_TOKENS = "kv_cache_tokens"  # the replicas' routing stats (LLMServer)


def request_body(args: list[Any], kwargs: Mapping[str, Any]) -> tuple[Mapping | None, str | None]:
    """The request's JSON body and session header, from a call's arguments: an HttpRequest
    (router ingress), a RunPod job input (job queue), a body (ingress request router), or
    Serve's Python proxy's request (its session header only: the body is not read yet)."""
    session = kwargs.get(SESSION)
    for arg in args:
        scope = getattr(arg, "asgi_scope", None)  # Serve's Python proxy: the body comes later
        if isinstance(scope, Mapping):
            return None, session or _header(scope.get("headers") or [], b"x-session-id")
        if isinstance(arg, Mapping):
            inner = arg.get("openai_input")
            return (inner if isinstance(inner, Mapping) else arg), session
        body = getattr(arg, "body", None)
        if isinstance(body, bytes | bytearray) and body:
            try:
                parsed = json.loads(body)
            except ValueError:
                return None, session
            headers = getattr(arg, "headers", None) or []
            session = session or _header(headers, b"x-session-id")
            return (parsed if isinstance(parsed, Mapping) else None), session
    return None, session


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class PolicyRouter(RequestRouter):
    """Routes by serve_app.routing.policy; kwargs: `policy`, `max_imbalance`."""

    def initialize_state(self, policy: str = "prefix", max_imbalance: int = 4, **_: Any) -> None:
        self._policy = Policy(policy, max_imbalance)  # type: ignore[arg-type]
        self._asking: asyncio.Future | None = None
        self._refresher: asyncio.Task | None = None  # asks every FRESH_S while picks come
        self._last_pick = 0.0
        self._answered_at = 0.0  # when the replicas last told their loads
        self._picked: dict[ReplicaID, int] = {}  # route-only picks of each replica, ever
        self._decisions: Any = None
        try:
            from ray.serve import metrics

            self._decisions = metrics.Counter(
                "serve_app_routing_decisions",
                description="LLM routing decisions by policy and reason (ROUTING_POLICY).",
                # "deployment" is Serve's own tag: the deployment this router runs in
                tag_keys=("llm_deployment", "policy", "reason"),
            )
        except Exception as exc:  # metrics are not essential to routing
            logger.warning("routing metrics unavailable: %s", exc)

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        super().update_replicas(replicas)
        current = {r.replica_id for r in replicas}
        self._picked = {rid: n for rid, n in self._picked.items() if rid in current}
        self._policy.index.set_replicas(r.replica_id.to_full_id_str() for r in replicas)

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        by_id = {r.replica_id.to_full_id_str(): r for r in candidate_replicas}
        for rid, replica in by_id.items():
            tokens = (replica.routing_stats or {}).get(KV_CACHE_TOKENS)
            if isinstance(tokens, int) and tokens > 0:
                self._policy.index.set_capacity(rid, tokens)
        body, session = (None, None)
        route_only = False
        if pending_request is not None:
            body, session = request_body(pending_request.args, pending_request.kwargs)
            session = session or getattr(pending_request.metadata, "session_id", None) or None
            route_only = bool(pending_request.kwargs.get(ROUTE_ONLY))
        if route_only:
            self._last_pick = time.monotonic()
            if self._refresher is None or self._refresher.done():
                self._refresher = asyncio.create_task(self._keep_loads_fresh())
            if not self._one_idle(by_id) and time.monotonic() - self._answered_at > BURST_S:
                await self._ask_loads()
        loads = self._loads(by_id)
        blocks = self._policy.blocks(routing_text(body) if body else None)
        affinity = affinity_key(body or {}, session)
        decision = self._policy.decide(list(by_id), loads, blocks, affinity)
        if route_only and decision.reason == "load":
            # The loads count picks since the replicas last reported theirs, some of which may
            # have finished: ask the replicas before sending a request away from its cache.
            await self._ask_loads(now=True)
            loads = self._loads(by_id)
            decision = self._policy.decide(list(by_id), loads, blocks, affinity)
        self._policy.record(blocks, decision.replica)
        chosen = by_id[decision.replica]
        if self._decisions is not None:
            self._decisions.inc(
                tags={
                    "llm_deployment": self._deployment_id.name,
                    "policy": self._policy.name,
                    "reason": decision.reason,
                }
            )
        if route_only:  # Serve counts what it sends itself; this request goes out of band
            self.on_send_request(chosen.replica_id)
            self._picked[chosen.replica_id] = self._picked.get(chosen.replica_id, 0) + 1
        others = sorted(
            (r for rid, r in by_id.items() if rid != decision.replica),
            key=lambda r: loads[r.replica_id.to_full_id_str()],
        )
        # Serve takes the first rank's replica if it has room, else the next rank's.
        return [[chosen], others] if others else [[chosen]]

    def _loads(self, by_id: dict[str, RunningReplica]) -> dict[str, int]:
        """Running and queued requests of each replica, as this caller knows them."""
        return {
            rid: self._replica_queue_len_cache.get(replica.replica_id) or 0
            for rid, replica in by_id.items()
        }

    def _one_idle(self, by_id: dict[str, RunningReplica]) -> bool:
        """Whether a replica is known to be idle: its last answer plus picks since is 0."""
        cache = self._replica_queue_len_cache
        return any(cache.get(replica.replica_id) == 0 for replica in by_id.values())

    async def _ask_loads(self, now: bool = False) -> None:
        """Each replica's running and queued requests, from the replicas: picks that come
        while the question is out wait for its answer (one question per burst); `now` asks
        again even if a question is out (its answer may predate picks since)."""
        if now or self._asking is None or self._asking.done():
            self._asking = asyncio.ensure_future(self._refresh(list(self.curr_replicas.values())))
        await asyncio.shield(self._asking)

    async def _keep_loads_fresh(self) -> None:
        """Asks the replicas their loads every FRESH_S until IDLE_S after the last pick."""
        while time.monotonic() - self._last_pick < IDLE_S:
            await asyncio.sleep(FRESH_S)
            await self._ask_loads()

    async def _refresh(self, replicas: list[RunningReplica]) -> None:
        """Each replica's running and queued requests, from the replica (bounded in time),
        plus this caller's picks of it since the question went out (which it may not have
        counted yet: HAProxy sends them after the pick)."""

        async def one(replica: RunningReplica) -> None:
            rid = replica.replica_id
            before = self._picked.get(rid, 0)
            with contextlib.suppress(Exception):  # a replica stopping: Serve drops it
                deadline = PROBE_TIMEOUT_S
                queue = await asyncio.wait_for(
                    replica.get_queue_len(deadline_s=deadline), timeout=deadline
                )
                self.on_new_queue_len_info(rid, queue + self._picked.get(rid, 0) - before)

        await asyncio.gather(*(one(r) for r in replicas))
        self._answered_at = time.monotonic()


__all__ = ["REASONS", "ROUTE_ONLY", "SESSION", "PolicyRouter", "request_body"]
