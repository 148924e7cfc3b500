"""The Ray Serve application: `import_path: serve_app.app:build_app` in serve_config.yaml.

One model:      client --HTTP--> LLM replica (FastAPI + vLLM AsyncLLM)      [ingress: llm]
                (several replicas: HAProxy asks RoutePicker which, by ROUTING_POLICY)
Several models: client --HTTP--> Ingress (FastAPI) --handle--> LLM replicas [ingress: router]
RunPod jobs:    ingress --handle--> JobQueue --handle--> LLM replicas
"""

from __future__ import annotations

import os
from typing import Any

from ray import serve
from ray.serve import Application

from serve_app.config.errors import ConfigError
from serve_app.config.plan import AppPlan, ModelDeployment, build_plan, placement_problems
from serve_app.config.ray_env import ray_setting_on
from serve_app.deployments.ingress import Ingress
from serve_app.deployments.job_queue import JobQueue
from serve_app.deployments.llm_server import LLMIngressServer, LLMServer
from serve_app.deployments.route_picker import RoutePicker
from serve_app.engine import args as vllm_args
from serve_app.logs import get_logger

logger = get_logger(__name__)

LLMDeployment = serve.deployment(LLMServer)
LLMIngressDeployment = serve.deployment(serve.ingress()(LLMIngressServer))
# Job state lives in the job store (JOB_STORE_URL), so its replicas (JOB_QUEUE_REPLICAS) are
# interchangeable. Many runsync calls wait inside it at once, so its concurrency limit is high;
# it does no heavy work itself. Every call it gets comes from an ingress that logged the HTTP
# request already: no access log of its own (its failures are still logged).
JobQueueDeployment = serve.deployment(
    JobQueue,
    max_ongoing_requests=100_000,
    ray_actor_options={"num_cpus": 0},
    logging_config={"enable_access_log": False},
)

# On HAProxy's path of every request: never throttled by Serve's default limit; no GPU or CPU
# reserved (it only picks).
RoutePickerDeployment = serve.deployment(
    RoutePicker,
    max_ongoing_requests=100_000,
    ray_actor_options={"num_cpus": 0},
    logging_config={"enable_access_log": False},
)


def llm_deployment(model: ModelDeployment, deployment: Any = LLMDeployment, *args: Any) -> Any:
    """The model's LLM deployment with its Serve options, bound to `model` (and `args`)."""
    options = model.serve.deployment_options()
    actor_options = dict(options.pop("ray_actor_options"))
    if model.env_vars:
        actor_options["runtime_env"] = {"env_vars": dict(model.env_vars)}
    return deployment.options(
        name=model.deployment_name, ray_actor_options=actor_options, **options
    ).bind(model, *args)


def check_placement(plan: AppPlan) -> None:
    """Refuse a plan whose replicas no node of the running cluster can hold (ConfigError)."""
    import ray

    if not ray.is_initialized():  # `plan` outside a cluster: nothing to compare against
        return
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    if problems := placement_problems(plan, nodes):
        raise ConfigError(problems)


def haproxy_on() -> bool:
    """Serve's HAProxy ingress is on (warned otherwise)."""
    on = ray_setting_on("RAY_SERVE_ENABLE_HA_PROXY")
    if not on:
        logger.warning(
            "Ray was not started with RAY_SERVE_ENABLE_HA_PROXY=1: Serve's Python proxy "
            "carries every request and costs about two thirds of the streaming throughput. "
            "Start Ray with it (`make serve`, the container and cluster/ scripts do)."
        )
    return on


def with_route_picker(llm: Application, model: ModelDeployment) -> Application:
    """The one-model ingress with HAProxy asking RoutePicker which replica takes each POST."""
    forward_body = ray_setting_on("RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY")
    if model.serve.routing.policy == "prefix" and not forward_body:
        logger.warning(
            "Ray was started without RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY=1: HAProxy "
            "does not show the router the prompts, so ROUTING_POLICY=prefix routes HTTP requests "
            "by x-session-id and load only. Start Ray with it (`make serve` and the container do)."
        )
    # Serve's hook for an ingress request router: internal, the one Ray Serve LLM's direct
    # streaming uses; checked here so that another Ray fails at deploy, saying so.
    if not hasattr(llm, "_with_ingress_request_router"):
        raise ConfigError(
            [
                "this Ray has no ingress request router hook (Ray 2.60's "
                "Application._with_ingress_request_router): install the Ray pinned in "
                "pyproject.toml, or set ROUTING_POLICY=least_loaded"
            ]
        )
    return llm._with_ingress_request_router(RoutePickerDeployment.bind(llm))


def build_from_plan(plan: AppPlan) -> Application:
    check_placement(plan)
    haproxy = haproxy_on()
    for model in plan.models:
        for note in model.notes:
            logger.info("%s: %s", model.deployment_name, note)
    jobs = JobQueueDeployment.options(num_replicas=plan.jobs.num_replicas).bind(
        plan.jobs, [model.deployment_name for model in plan.models]
    )
    if plan.ingress.mode == "llm":
        (model,) = plan.models
        llm = llm_deployment(model, LLMIngressDeployment, plan.ingress, jobs)
        # Behind HAProxy, the deployment's request router only picks for handle calls (jobs):
        # HAProxy asks the RoutePicker for HTTP. Serve's Python proxy uses the router itself.
        if not model.serve.routes_by_policy:
            return llm
        if not haproxy and model.serve.routing.policy == "prefix":
            logger.warning(
                "ROUTING_POLICY=prefix: Serve's Python proxy does not show the router the "
                "prompts, so HTTP requests are routed by x-session-id and load only (jobs are "
                "routed by prompt). Start Ray with RAY_SERVE_ENABLE_HA_PROXY=1."
            )
        return with_route_picker(llm, model) if haproxy else llm
    llms = {model.deployment_name: llm_deployment(model) for model in plan.models}
    return Ingress.options(num_replicas=plan.ingress.num_replicas).bind(plan.ingress, llms, jobs)


def build_app(args: dict[str, Any] | None = None) -> Application:
    """Application builder for Ray Serve. `args` (serve_config.yaml) override env values.

    Raises ConfigError, listing every bad variable, before any model loads.
    """
    return build_from_plan(build_plan(os.environ, args, engine_args=vllm_args))
