"""Where an LLM replica runs: its Ray resources, placement-group bundles and vLLM executor.

Pure functions of the parallelism settings, so the decisions are unit-tested without GPUs.

* One engine worker per GPU: TENSOR_PARALLEL_SIZE x PIPELINE_PARALLEL_SIZE workers.
* GPU, one worker: the replica actor holds the GPU itself; vLLM's default executor.
* GPU, several workers: a placement group with one GPU bundle per worker, the replica actor's
  CPU folded into the first bundle; vLLM's Ray executor runs its workers inside that group.
  STRICT_PACK keeps tensor-parallel workers on one node (NVLink); with pipeline stages the
  group may span nodes (PACK).
* CPU: vLLM's multiprocessing executor; the Ray executor is refused on CPU.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

Platform = Literal["cpu", "gpu"]
Strategy = Literal["PACK", "STRICT_PACK", "SPREAD", "STRICT_SPREAD"]

# Ray's logical CPUs for an LLM replica actor. The engine's real CPU use is in its own
# processes; on a 2-core machine a whole CPU per replica plus the ingress must still fit.
REPLICA_CPUS = 1.0
INGRESS_CPUS = 0.1


class ReplicaPlacement(BaseModel):
    """Ray resources of one LLM replica and the vLLM executor that fits them."""

    world_size: int
    ray_actor_options: dict[str, Any]
    placement_group_bundles: list[dict[str, float]] | None = None
    placement_group_strategy: Strategy | None = None
    executor: Literal["uni", "mp", "ray"]

    def deployment_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"ray_actor_options": self.ray_actor_options}
        if self.placement_group_bundles:
            options["placement_group_bundles"] = self.placement_group_bundles
            options["placement_group_strategy"] = self.placement_group_strategy
        return options


def plan_replica(
    platform: Platform,
    tensor_parallel_size: int = 1,
    pipeline_parallel_size: int = 1,
    *,
    executor: str | None = None,
    strategy: Strategy | None = None,
) -> ReplicaPlacement:
    """Resources, bundles and executor for one replica of an LLM deployment."""
    world = tensor_parallel_size * pipeline_parallel_size
    if platform == "cpu":
        if executor == "ray":
            raise ValueError(
                "DISTRIBUTED_EXECUTOR_BACKEND=ray: vLLM's CPU backend does not support the Ray "
                "executor; use mp (the default on CPU)"
            )
        return ReplicaPlacement(
            world_size=world,
            ray_actor_options={"num_cpus": REPLICA_CPUS},
            executor="mp",  # vLLM on CPU always runs its workers in processes
        )
    if world == 1:
        return ReplicaPlacement(
            world_size=1,
            ray_actor_options={"num_cpus": REPLICA_CPUS, "num_gpus": 1},
            executor=executor or "uni",  # type: ignore[arg-type]
        )
    bundles = [{"CPU": REPLICA_CPUS, "GPU": 1.0}] + [{"GPU": 1.0} for _ in range(world - 1)]
    return ReplicaPlacement(
        world_size=world,
        ray_actor_options={"num_cpus": REPLICA_CPUS},
        placement_group_bundles=bundles,
        placement_group_strategy=strategy
        or ("STRICT_PACK" if pipeline_parallel_size == 1 else "PACK"),
        executor=executor or "ray",  # type: ignore[arg-type]
    )
