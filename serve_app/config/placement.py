"""Where an LLM replica runs: its Ray resources, placement-group bundles and vLLM executor.

Pure functions of the parallelism settings, so the decisions are unit-tested without GPUs.

* One engine worker per device: TENSOR_PARALLEL_SIZE x PIPELINE_PARALLEL_SIZE workers.
* GPU, one worker: the replica actor holds the GPU itself; vLLM's default executor.
* GPU, several workers: a placement group with one GPU bundle per worker, the replica actor's
  CPU folded into the first bundle. vLLM's Ray executor runs its workers inside that group
  (the replica hands it over: it must not create a second one). STRICT_PACK keeps
  tensor-parallel workers on one node; with pipeline stages the group may span nodes (PACK).
* CPU: vLLM's multiprocessing executor (the Ray executor is refused on CPU). Several workers
  get one logical CPU each, in a STRICT_PACK group beside the replica's own.
* GPU_TYPE adds Ray's `accelerator_type:<type>` resource to what the replica needs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import BaseModel

Platform = Literal["cpu", "gpu"]
Strategy = Literal["PACK", "STRICT_PACK", "SPREAD", "STRICT_SPREAD"]

# Ray's logical CPUs for an LLM replica actor. The engine's real CPU use is in its own
# processes; on a 2-core machine a whole CPU per replica plus the ingress must still fit.
REPLICA_CPUS = 1.0
# Ray's convention for "must run on a node of this accelerator type" (any small amount).
ACCELERATOR_SHARE = 0.001


class ReplicaPlacement(BaseModel):
    """Ray resources of one LLM replica and the vLLM executor that fits them."""

    world_size: int
    ray_actor_options: dict[str, Any]
    placement_group_bundles: list[dict[str, float]] | None = None
    placement_group_strategy: Strategy | None = None
    executor: Literal["uni", "mp", "ray"]

    def deployment_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"ray_actor_options": dict(self.ray_actor_options)}
        if self.placement_group_bundles:
            options["placement_group_bundles"] = self.placement_group_bundles
            options["placement_group_strategy"] = self.placement_group_strategy
        return options

    def needs(self) -> list[dict[str, float]]:
        """What the replica needs, as bundles (one bundle when there is no group)."""
        if self.placement_group_bundles:
            return self.placement_group_bundles
        options = self.ray_actor_options
        need = {"CPU": float(options.get("num_cpus", 0)), "GPU": float(options.get("num_gpus", 0))}
        need.update(options.get("resources", {}))
        return [{k: v for k, v in need.items() if v}]


def _accelerator(accelerator_type: str | None) -> dict[str, float]:
    return {f"accelerator_type:{accelerator_type}": ACCELERATOR_SHARE} if accelerator_type else {}


def plan_replica(
    platform: Platform,
    tensor_parallel_size: int = 1,
    pipeline_parallel_size: int = 1,
    *,
    executor: str | None = None,
    strategy: Strategy | None = None,
    accelerator_type: str | None = None,
) -> ReplicaPlacement:
    """Resources, bundles and executor for one replica of an LLM deployment (ValueError if
    the settings contradict each other)."""
    world = tensor_parallel_size * pipeline_parallel_size
    hint = _accelerator(accelerator_type)
    if platform == "cpu":
        if executor == "ray":
            raise ValueError(
                "DISTRIBUTED_EXECUTOR_BACKEND=ray: vLLM's CPU backend does not support the Ray "
                "executor; use mp (the default on CPU)"
            )
        if strategy not in (None, "STRICT_PACK", "PACK"):
            raise ValueError(
                f"PLACEMENT_STRATEGY={strategy}: vLLM's CPU workers are local processes of the "
                "replica, so they need one node (STRICT_PACK)"
            )
        if world == 1:
            options: dict[str, Any] = {"num_cpus": REPLICA_CPUS}
            if hint:
                options["resources"] = hint
            return ReplicaPlacement(world_size=1, ray_actor_options=options, executor="mp")
        bundles = [{"CPU": REPLICA_CPUS, **hint}] + [{"CPU": 1.0} for _ in range(world)]
        return ReplicaPlacement(
            world_size=world,
            ray_actor_options={"num_cpus": REPLICA_CPUS},
            placement_group_bundles=bundles,
            placement_group_strategy="STRICT_PACK",
            executor="mp",
        )
    if world == 1:
        options = {"num_cpus": REPLICA_CPUS, "num_gpus": 1}
        if accelerator_type:
            options["accelerator_type"] = accelerator_type
        return ReplicaPlacement(
            world_size=1,
            ray_actor_options=options,
            executor=executor or "uni",  # type: ignore[arg-type]
        )
    if executor not in (None, "ray"):
        raise ValueError(
            f"DISTRIBUTED_EXECUTOR_BACKEND={executor} with {world} GPU workers: a replica's "
            "workers run in its Ray placement group with the ray executor"
        )
    bundles = [{"CPU": REPLICA_CPUS, "GPU": 1.0, **hint}] + [
        {"GPU": 1.0, **hint} for _ in range(world - 1)
    ]
    return ReplicaPlacement(
        world_size=world,
        ray_actor_options={"num_cpus": REPLICA_CPUS},
        placement_group_bundles=bundles,
        placement_group_strategy=strategy
        or ("STRICT_PACK" if pipeline_parallel_size == 1 else "PACK"),
        executor="ray",
    )


def _fits(need: Mapping[str, float], node: Mapping[str, float]) -> bool:
    return all(node.get(resource, 0.0) + 1e-9 >= amount for resource, amount in need.items())


def _total(bundles: Iterable[Mapping[str, float]]) -> dict[str, float]:
    total: dict[str, float] = {}
    for bundle in bundles:
        for resource, amount in bundle.items():
            total[resource] = total.get(resource, 0.0) + amount
    return total


def _shown(resources: Mapping[str, float]) -> str:
    kept = {k: v for k, v in resources.items() if k in ("CPU", "GPU") or k.startswith("acc")}
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(kept.items())) + "}"


def unplaceable(placement: ReplicaPlacement, nodes: list[Mapping[str, float]]) -> str | None:
    """Why one replica can never be placed on a cluster with these nodes' total resources,
    or None if it can (ignoring what other replicas use now)."""
    if not nodes:
        return None
    bundles = placement.needs()
    one_node = placement.placement_group_strategy in (None, "STRICT_PACK")
    largest = max(nodes, key=lambda n: (n.get("GPU", 0.0), n.get("CPU", 0.0)))
    cluster = _total(nodes)
    need = _total(bundles)
    if one_node and not any(_fits(need, node) for node in nodes):
        return (
            f"an LLM replica needs {_shown(need)} on one node ({len(bundles)} bundle(s), "
            f"{placement.placement_group_strategy or 'one actor'}), but the largest node has "
            f"{_shown(largest)} (the cluster: {_shown(cluster)})"
        )
    if not one_node:
        if not _fits(need, cluster):
            return f"an LLM replica needs {_shown(need)}, but the cluster has {_shown(cluster)}"
        for bundle in bundles:
            if not any(_fits(bundle, node) for node in nodes):
                return f"no node can hold the bundle {_shown(bundle)} (largest: {_shown(largest)})"
    return None


def cpu_thread_binding(cpus: Iterable[int], workers: int) -> str:
    """VLLM_CPU_OMP_THREADS_BIND for `workers` CPU workers: the cores split evenly, in
    order (e.g. cores 0-7, 2 workers: "0-3|4-7"). Each worker needs at least one core."""
    cores = sorted(cpus)
    if workers < 1 or len(cores) < workers:
        raise ValueError(
            f"{workers} CPU workers need {workers} cores, this process has {len(cores)}"
        )
    share = len(cores) // workers
    parts = []
    for i in range(workers):
        mine = cores[i * share : (i + 1) * share]
        contiguous = mine[-1] - mine[0] == len(mine) - 1
        if len(mine) == 1:
            parts.append(str(mine[0]))
        else:
            parts.append(f"{mine[0]}-{mine[-1]}" if contiguous else ",".join(map(str, mine)))
    return "|".join(parts)
