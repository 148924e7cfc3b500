"""Placement plans for LLM replicas (pure functions; GPU paths cannot run here)."""

from __future__ import annotations

import pytest

from serve_app.placement import plan_replica


def test_cpu_replica_uses_multiprocessing_executor_without_placement_group():
    plan = plan_replica("cpu", 1, 1)
    assert plan.ray_actor_options == {"num_cpus": 1.0}
    assert plan.placement_group_bundles is None
    assert plan.executor == "mp"


def test_cpu_refuses_the_ray_executor_with_a_clear_message():
    with pytest.raises(ValueError, match="does not support the Ray executor"):
        plan_replica("cpu", 2, 1, executor="ray")


def test_single_gpu_replica_holds_its_gpu_directly():
    plan = plan_replica("gpu", 1, 1)
    assert plan.ray_actor_options == {"num_cpus": 1.0, "num_gpus": 1}
    assert plan.placement_group_bundles is None


@pytest.mark.parametrize(
    ("tp", "pp", "strategy"),
    [(2, 1, "STRICT_PACK"), (4, 1, "STRICT_PACK"), (2, 2, "PACK"), (1, 3, "PACK")],
)
def test_multi_gpu_replica_gets_one_gpu_bundle_per_worker(tp, pp, strategy):
    plan = plan_replica("gpu", tp, pp)
    bundles = plan.placement_group_bundles
    assert bundles is not None and len(bundles) == tp * pp
    assert bundles[0] == {"CPU": 1.0, "GPU": 1.0}  # the replica actor's CPU is in bundle 0
    assert all(b == {"GPU": 1.0} for b in bundles[1:])
    assert plan.placement_group_strategy == strategy
    assert plan.executor == "ray"
    assert plan.ray_actor_options == {"num_cpus": 1.0}
    options = plan.deployment_options()
    assert options["placement_group_bundles"] == bundles
    assert options["placement_group_strategy"] == strategy
