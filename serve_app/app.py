"""The Ray Serve application: `import_path: serve_app.app:build_app` in serve_config.yaml.

client --HTTP--> Ingress (FastAPI) --DeploymentHandle--> LLM deployment(s) --> vLLM AsyncLLM
"""

from __future__ import annotations

import os
from typing import Any

from ray import serve
from ray.serve import Application

from .config.plan import AppPlan, ModelDeployment, build_plan
from .ingress import Ingress
from .llm_server import LLMServer
from .logs import get_logger

logger = get_logger(__name__)

LLMDeployment = serve.deployment(LLMServer)


def llm_deployment(model: ModelDeployment) -> Application:
    options = model.serve.deployment_options()
    actor_options = dict(options.pop("ray_actor_options"))
    if model.env_vars:
        actor_options["runtime_env"] = {"env_vars": dict(model.env_vars)}
    return LLMDeployment.options(
        name=model.deployment_name, ray_actor_options=actor_options, **options
    ).bind(model)


def build_from_plan(plan: AppPlan) -> Application:
    for model in plan.models:
        for note in model.notes:
            logger.info("%s: %s", model.deployment_name, note)
    llms = {model.deployment_name: llm_deployment(model) for model in plan.models}
    return Ingress.bind(plan.ingress, llms)


def build_app(args: dict[str, Any] | None = None) -> Application:
    """Application builder for Ray Serve. `args` (serve_config.yaml) override env values.

    Raises ConfigError, listing every bad variable, before any model loads.
    """
    return build_from_plan(build_plan(os.environ, args))
