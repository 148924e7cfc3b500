"""Placement plans for LLM replicas (pure functions; GPU paths cannot run here)."""

from __future__ import annotations

import pytest

from serve_app.config.placement import cpu_thread_binding, plan_replica, unplaceable


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


def test_cpu_replica_with_several_workers_reserves_a_cpu_per_worker_on_one_node():
    plan = plan_replica("cpu", 2, 1)
    assert plan.placement_group_bundles == [{"CPU": 1.0}, {"CPU": 1.0}, {"CPU": 1.0}]
    assert plan.placement_group_strategy == "STRICT_PACK"
    assert plan.executor == "mp"
    with pytest.raises(ValueError, match="need one node"):
        plan_replica("cpu", 2, 1, strategy="SPREAD")


def test_strategy_override_and_gpu_type_hint():
    plan = plan_replica("gpu", 2, 2, strategy="SPREAD", accelerator_type="H100")
    assert plan.placement_group_strategy == "SPREAD"
    assert all(b["accelerator_type:H100"] == 0.001 for b in plan.placement_group_bundles)
    single = plan_replica("gpu", 1, 1, accelerator_type="L4")
    assert single.ray_actor_options["accelerator_type"] == "L4"
    assert plan_replica("cpu", accelerator_type="X").ray_actor_options["resources"] == {
        "accelerator_type:X": 0.001
    }


def test_multi_gpu_replica_refuses_a_non_ray_executor():
    with pytest.raises(ValueError, match="ray executor"):
        plan_replica("gpu", 4, 1, executor="mp")


NODE_4_GPUS = {"CPU": 32.0, "GPU": 4.0}


def test_unplaceable_says_what_is_asked_and_what_exists():
    reason = unplaceable(plan_replica("gpu", 8, 1), [NODE_4_GPUS, NODE_4_GPUS])
    assert reason is not None
    assert "needs {CPU: 1, GPU: 8} on one node" in reason
    assert "largest node has {CPU: 32, GPU: 4}" in reason
    assert "{CPU: 64, GPU: 8}" in reason  # the cluster


def test_pipeline_stages_may_span_nodes():
    assert unplaceable(plan_replica("gpu", 4, 2), [NODE_4_GPUS, NODE_4_GPUS]) is None
    reason = unplaceable(plan_replica("gpu", 4, 3), [NODE_4_GPUS, NODE_4_GPUS])
    assert reason is not None and "the cluster has {CPU: 64, GPU: 8}" in reason


def test_fitting_plans_and_accelerator_type_resources():
    assert unplaceable(plan_replica("gpu", 4, 1), [NODE_4_GPUS]) is None
    assert unplaceable(plan_replica("cpu", 1, 1), [{"CPU": 2.0}]) is None
    assert unplaceable(plan_replica("cpu", 2, 1), [{"CPU": 2.0}]) is not None  # needs 3 CPUs
    h100 = plan_replica("gpu", 2, 1, accelerator_type="H100")
    assert unplaceable(h100, [NODE_4_GPUS]) is not None
    assert unplaceable(h100, [{**NODE_4_GPUS, "accelerator_type:H100": 1.0}]) is None


@pytest.mark.parametrize(
    ("cpus", "workers", "binding"),
    [
        ([0, 1], 2, "0|1"),
        (range(8), 2, "0-3|4-7"),
        (range(6), 4, "0|1|2|3"),
        ([0, 2, 4, 6], 2, "0,2|4,6"),
    ],
)
def test_cpu_thread_binding_splits_cores_between_workers(cpus, workers, binding):
    assert cpu_thread_binding(cpus, workers) == binding


def test_cpu_thread_binding_needs_a_core_per_worker():
    with pytest.raises(ValueError, match="2 CPU workers need 2 cores"):
        cpu_thread_binding([0], 2)
