"""The peer column of the benchmark: Ray Serve LLM (`ray.serve.llm`), Ray's own LLM serving
library, serving the same model with the same engine arguments (`python bench/run.py --peer`).

It runs as Ray ships it: `serve run` of `ray.serve.llm:build_openai_app`, Ray's defaults (none
of the `RAY_*` settings this application applies where Ray starts, so Serve's Python proxy),
one replica. Two settings are needed to run it at all on a CPU machine: `accelerator_config`
says CPU (it asks for a GPU otherwise), and its ingress deployment asks for no CPU, so that the
ingress and the engine's placement group fit on two cores (Ray sees as many logical CPUs as
cores; the defaults need three).

`python bench/run.py --peer rayllm-direct` runs it with Ray Serve LLM's direct streaming
instead (`RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING=1`, which needs Serve's HAProxy ingress): its
LLM server is then the HTTP ingress behind HAProxy, and an ingress request router picks the
replica per request, the shape of this application's single-model path. That mode takes no
`ingress_deployment_config` (there is no separate ingress; the router asks for no CPU).
"""

from __future__ import annotations

from typing import Any

# Arguments that name the model: Ray Serve LLM takes those from `model_loading_config`.
NAMING = ("model", "served_model_name")

# Ray's settings for direct streaming, read where Ray starts (`serve run` starts it here).
DIRECT_STREAMING_ENV = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING": "1",
}


# Ray Serve LLM's prefix-aware request router (bench/routing.py's peer column).
PREFIX_ROUTER = "ray.serve.llm.request_router:PrefixCacheAffinityRouter"


def app_config(
    served_name: str,
    engine: dict[str, Any],
    port: int,
    direct_streaming: bool = False,
    replicas: int = 1,
    request_router: str | None = None,
) -> dict:
    """The Serve config of Ray Serve LLM for one model; `engine` is the vLLM engine arguments
    this application's plan derives (`vllm_args`, `model` a local path), passed on as Ray Serve
    LLM's `engine_kwargs`. `direct_streaming`: for a start with DIRECT_STREAMING_ENV.
    `replicas` of the LLM deployment, routed by `request_router` (a class path) if given."""
    deployment: dict[str, Any] = {
        "autoscaling_config": {"min_replicas": replicas, "max_replicas": replicas}
    }
    if request_router:
        deployment["request_router_config"] = {"request_router_class": request_router}
    llm = {
        "model_loading_config": {"model_id": served_name, "model_source": engine["model"]},
        "accelerator_config": {"kind": "cpu"},
        "placement_group_config": {"bundles": [{"CPU": 1}]},
        "engine_kwargs": {k: v for k, v in engine.items() if k not in NAMING},
        "deployment_config": deployment,
    }
    args: dict[str, Any] = {"llm_configs": [llm]}
    if not direct_streaming:  # direct streaming has no ingress deployment (and refuses this)
        args["ingress_deployment_config"] = {"ray_actor_options": {"num_cpus": 0}}
    return {
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [
            {
                "name": "llm",
                "route_prefix": "/",
                "import_path": "ray.serve.llm:build_openai_app",
                "args": args,
            }
        ],
    }
