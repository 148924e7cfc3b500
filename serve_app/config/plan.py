"""From environment (+ serve_config.yaml `args`) to the plan of what gets deployed.

`build_plan` is the only entry: it validates everything before any model loads and raises
one ConfigError listing every problem. The plan is plain data (pydantic), passed by the
application builder to the ingress and to each LLM deployment, and printed by
`python -m serve_app plan`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field, computed_field

from serve_app.config.env import EnvValues, read_env
from serve_app.config.errors import ConfigError
from serve_app.config.placement import Platform, ReplicaPlacement, plan_replica, unplaceable
from serve_app.config.schema import EnvSchema, load_schema

logger = logging.getLogger(__name__)

DEFAULT_BASE_PATH = "/runpod-volume"
FALLBACK_BASE_PATH = "~/.cache/ray-vllm-worker"
CPU_KV_CACHE_BYTES = 1 << 30  # vLLM otherwise reserves a share of the whole node's memory

# Settings of the schema that vLLM reads from the replica's environment.
VLLM_ENV_SETTINGS = ("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "VLLM_ENABLE_RESPONSES_API_STORE")

# Serve's max_ongoing_requests of an LLM replica is MAX_CONCURRENCY + MAX_QUEUED_REQUESTS + this:
# room for the short requests (health, models, tokenize, job status) beside full generations.
CONTROL_HEADROOM = 32

# Keys of serve_config.yaml `args` that are not environment variables.
MODELS_KEY = "models"

ROUTER_CLASS = "serve_app.routing.serve_router:PolicyRouter"


class Storage(BaseModel):
    base_path: str
    hf_cache: str
    baked_dir: str | None = None


class Autoscaling(BaseModel):
    """Serve's autoscaling of an LLM deployment by ongoing requests per replica."""

    min_replicas: int
    max_replicas: int
    target_ongoing_requests: float
    upscale_delay_s: float
    downscale_delay_s: float

    def config(self) -> dict[str, Any]:
        return {
            **self.model_dump(),
            "initial_replicas": self.min_replicas,
            "downscale_to_zero_delay_s": self.downscale_delay_s,
        }


class Routing(BaseModel):
    """ROUTING_POLICY: which replica of a model takes each request (serve_app/routing/).

    `least_loaded` is Serve's own choice (HAProxy's leastconn over HTTP, power of two choices
    on handles); the others are this application's request router on every path."""

    policy: Literal["prefix", "least_loaded", "round_robin"] = "prefix"
    max_imbalance: int = 4

    @property
    def custom(self) -> bool:
        return self.policy != "least_loaded"

    def request_router_config(self) -> dict[str, Any]:
        """Serve's `request_router_config` of the deployment (the class named, not imported:
        this layer imports no runtime module)."""
        return {
            "request_router_class": ROUTER_CLASS,
            "request_router_kwargs": {"policy": self.policy, "max_imbalance": self.max_imbalance},
        }


class HostTuning(BaseModel):
    """How a replica uses its machine (serve_app/host/), each setting resolved for the platform:
    on where it was measured to help (vLLM's CPU backend), off elsewhere unless set."""

    replica_niceness: int = 0  # the LLM replica's process, as vLLM runs its API server
    engine_niceness: int | None = None  # engine core and workers; None: as started
    engine_core_on_worker_cpus: bool = False  # with vLLM's CPU workers' main threads
    coalesce_http_writes: bool = False  # an ingress replica's writes of one tick together


def host_tuning(values: EnvValues, platform: Platform) -> HostTuning:
    """The host tuning settings, their platform defaults applied where unset."""
    cpu = platform == "cpu"

    def either(name: str, on_cpu: Any, elsewhere: Any) -> Any:
        return values[name] if values.is_set(name) else (on_cpu if cpu else elsewhere)

    return HostTuning(
        replica_niceness=values["LLM_REPLICA_NICENESS"],
        engine_niceness=values["LLM_ENGINE_NICENESS"],
        engine_core_on_worker_cpus=either("ENGINE_CORE_ON_WORKER_CPUS", True, False),
        coalesce_http_writes=either("COALESCE_HTTP_WRITES", True, False),
    )


class ServeOptions(BaseModel):
    """Ray Serve options of an LLM deployment."""

    max_concurrency: int  # generations a replica runs at once (serve_app/http/admission.py)
    max_queued_requests: int  # generations that may wait for one of those slots
    # an engine with requests but no step for this long is stopped, and the replica replaced
    engine_stall_timeout_s: float | None = 120.0
    max_n: int = 128  # choices (`n`) one request may ask for
    autoscaling: Autoscaling
    health_check_period_s: float = 10.0
    health_check_timeout_s: float = 30.0
    graceful_shutdown_timeout_s: float = 30.0
    placement: ReplicaPlacement
    check_placement: bool = True
    host: HostTuning
    routing: Routing = Routing()

    @computed_field  # type: ignore[prop-decorator]
    @property
    def max_ongoing_requests(self) -> int:
        """Serve's limit sits above the generation slots: short requests (health, models,
        job status) are never stuck behind generations."""
        return self.max_concurrency + self.max_queued_requests + CONTROL_HEADROOM

    @property
    def routes_by_policy(self) -> bool:
        """This application's request router picks the replicas (ROUTING_POLICY): with more
        than one replica to pick from, and never none (a request that arrives while the model
        is scaled to zero waits in Serve's own path for the first replica)."""
        scaling = self.autoscaling
        return self.routing.custom and scaling.max_replicas > 1 and scaling.min_replicas >= 1

    def deployment_options(self) -> dict[str, Any]:
        scaling = self.autoscaling
        replicas: dict[str, Any] = (
            {"num_replicas": scaling.min_replicas}
            if scaling.min_replicas == scaling.max_replicas
            else {"autoscaling_config": scaling.config()}
        )
        return {
            "max_ongoing_requests": self.max_ongoing_requests,
            **replicas,
            "health_check_period_s": self.health_check_period_s,
            "health_check_timeout_s": self.health_check_timeout_s,
            "graceful_shutdown_timeout_s": self.graceful_shutdown_timeout_s,
            **self.placement.deployment_options(),
            **(
                {"request_router_config": self.routing.request_router_config()}
                if self.routes_by_policy
                else {}
            ),
        }


class StreamingBatchSizes(BaseModel):
    """worker-vllm's growing token batches for RunPod job streaming."""

    max_batch_size: int
    min_batch_size: int
    growth_factor: float


class JobOutputOptions(BaseModel):
    """How an LLM replica shapes RunPod job outputs."""

    streaming: StreamingBatchSizes
    raw_openai_output: bool


class ModelDeployment(BaseModel):
    """One LLM deployment: a model served by autoscaled replicas, each owning one engine."""

    deployment_name: str
    model_name: str
    served_model_names: list[str]
    lora_names: list[str]
    vllm_args: dict[str, Any]
    vllm_argv: list[str]
    platform: Platform
    storage: Storage
    serve: ServeOptions
    env_vars: dict[str, str]
    jobs: JobOutputOptions
    notes: list[str]
    # /v1/load_lora_adapter and /v1/unload_lora_adapter, on every replica (deployments/lora_sync.py)
    runtime_lora_updating: bool = False
    # Tool calls on, no TOOL_CALL_PARSER: the replica picks one from the chat template
    # (engine/tool_parsers.py) and turns vLLM's auto tool choice on with it.
    choose_tool_parser: bool = False

    @property
    def model_names(self) -> list[str]:
        """Every `model` value this deployment answers to."""
        return [*self.served_model_names, *self.lora_names]


class EngineArguments(Protocol):
    """What the plan asks of the engine's own argument parser: vLLM's `vllm serve` parser, in
    the engine adapter (`serve_app.engine.args`), given to `build_plan` by its callers so that
    configuration imports no engine."""

    def detect_platform(self) -> Platform: ...
    def engine_arg_names(self) -> frozenset[str]: ...
    def parser_default(self, dest: str) -> Any: ...
    def choices_for(self, source: str) -> list[str]: ...
    def to_argv(self, options: Mapping[str, Any]) -> list[str]: ...
    def check_argv(self, argv: list[str]) -> list[str]: ...
    def read_passthrough(
        self, environ: Mapping[str, str], overrides: Mapping[str, Any], claimed: set[str]
    ) -> tuple[dict[str, Any], list[str]]: ...


class UnknownModelError(ValueError):
    """A request named no model (with several served) or one that is not served."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status

    def openai_fields(self) -> dict[str, Any]:
        """`param` and `code` of OpenAI's error body for it (404: `model_not_found`)."""
        return {"param": "model", "code": "model_not_found" if self.status == 404 else None}


class ModelRoutes(BaseModel):
    """Which LLM deployment serves each `model` name (served names and LoRA adapters)."""

    routes: dict[str, str]
    default_deployment: str | None  # when a request names no model (a single model served)

    def deployment_for(self, model: Any) -> str:
        """The deployment for a request's `model`; UnknownModelError (400/404) otherwise."""
        if model is None:
            if self.default_deployment is None:
                raise UnknownModelError("`model` is required: several models are served", 400)
            return self.default_deployment
        if not isinstance(model, str):
            raise UnknownModelError("`model` must be a string", 400)
        deployment = self.routes.get(model)
        if deployment is None:
            available = ", ".join(sorted(self.routes))
            raise UnknownModelError(
                f"The model `{model}` does not exist. Available models: {available}", 404
            )
        return deployment


class JobQueueOptions(BaseModel):
    models: ModelRoutes
    retention_s: float
    num_replicas: int = 1
    # JOB_STORE_URL; unset: an SQLite file per application in `store_dir`. Not in plan
    # output: a Redis URL may carry its password.
    store_url: str | None = Field(default=None, exclude=True, repr=False)
    store_dir: str = "jobs"
    max_queued_jobs: int = 10_000
    max_output_bytes: int = 64 << 20
    execution_timeout_s: float | None = 600.0
    ttl_s: float | None = 86400.0

    def store_for(self, app_name: str) -> str:
        """The job store's URL for the Serve application `app_name`."""
        return self.store_url or f"sqlite:///{Path(self.store_dir, app_name)}.sqlite3"


class IngressOptions(BaseModel):
    """The HTTP ingress. `llm`: one model, whose LLM replicas answer HTTP themselves (no hop
    between deployments on the token path). `router`: several models behind a router
    deployment of `num_replicas` replicas that calls each model's replicas by handle."""

    mode: Literal["llm", "router"]
    models: ModelRoutes
    num_replicas: int
    replica_wait_timeout_s: float
    runsync_timeout_s: float
    endpoint_id: str | None
    max_request_bytes: int
    job_queue_timeout_s: float = 10.0
    log_job_polls: bool = False
    host: HostTuning = HostTuning()  # for the router ingress: its HTTP writes
    # SHA-256 of API_KEY: the key itself is never stored in Serve's config; not in plan output.
    api_key_sha256: str | None = Field(default=None, exclude=True, repr=False)

    @property
    def requires_api_key(self) -> bool:
        return self.api_key_sha256 is not None


class AppPlan(BaseModel):
    ingress: IngressOptions
    jobs: JobQueueOptions
    models: list[ModelDeployment]


def placement_problems(plan: AppPlan, nodes: list[Mapping[str, float]]) -> list[str]:
    """One line per model whose replica no node of a cluster with these nodes' total
    resources can hold, saying what to change (none: every replica fits)."""
    problems = []
    for model in plan.models:
        reason = unplaceable(model.serve.placement, nodes) if model.serve.check_placement else None
        if reason:
            problems.append(
                f"{model.deployment_name} ({model.model_name}): {reason}. Lower "
                "TENSOR_PARALLEL_SIZE/PIPELINE_PARALLEL_SIZE, add nodes, or set "
                "SKIP_PLACEMENT_CHECK=1 if the cluster's autoscaler adds them"
            )
    return problems


def resolve_storage(values: EnvValues) -> Storage:
    base = values["BASE_PATH"]
    if not values.is_set("BASE_PATH") and not os.access(DEFAULT_BASE_PATH, os.W_OK):
        base = FALLBACK_BASE_PATH
    base_path = str(Path(base).expanduser())
    return Storage(
        base_path=base_path,
        hf_cache=str(Path(base_path, "huggingface-cache", "hub")),
        baked_dir=values["BAKED_MODELS_DIR"],
    )


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-") or "model"


def _vllm_options(
    values: EnvValues,
    schema: EnvSchema,
    platform: Platform,
    notes: list[str],
    vllm_args: EngineArguments,
) -> tuple[dict[str, Any], list[str]]:
    """vLLM serve arguments {dest: value} from the schema's variables; and problems."""
    problems: list[str] = []
    options: dict[str, Any] = {}
    for var in schema.variables:
        dest = var.target.vllm_dest
        if dest is None:
            continue
        value = values[var.name]
        if var.target.vllm_negated and value is not None:
            value = not value
        if not values.is_set(var.name):
            # Unset: pass the schema's default only where it differs from vLLM's own.
            if "." in dest:
                continue
            default = vllm_args.parser_default(dest)
            if value is None or value == default or (default is None and value is False):
                continue
        options[dest] = value

    model = values["MODEL_NAME"]
    options = {"model": model, **options}
    options["served_model_name"] = [values["OPENAI_SERVED_MODEL_NAME_OVERRIDE"] or model]

    if options.get("tokenizer_mode") == "slow":
        options["tokenizer_mode"] = "hf"
    if values["WORKER_USE_RAY"] and not values.is_set("DISTRIBUTED_EXECUTOR_BACKEND"):
        options["distributed_executor_backend"] = "ray"

    rope: dict[str, Any] = {}
    if values["ROPE_SCALING"] is not None:
        if not isinstance(values["ROPE_SCALING"], dict):
            problems.append(f"ROPE_SCALING={values['ROPE_SCALING']!r}: expected a JSON object")
        else:
            rope.update(values["ROPE_SCALING"])
            if "type" in rope and "rope_type" not in rope:
                rope["rope_type"] = rope.pop("type")
    if values["ROPE_THETA"] is not None:
        rope.setdefault("rope_type", "default")
        rope["rope_theta"] = values["ROPE_THETA"]
    if rope:
        options["hf_overrides"] = {"rope_parameters": rope}

    if (values["NGRAM_PROMPT_LOOKUP_MAX"] or values["NGRAM_PROMPT_LOOKUP_MIN"]) and not values[
        "SPECULATIVE_MODEL"
    ]:
        options["speculative_config.method"] = "ngram"

    loras = values["LORA_MODULES"] or []
    if loras:
        problems += _check_loras(loras, values)
        options["lora_modules"] = [
            {"base_model_name": options["served_model_name"][0], **m}
            for m in loras
            if isinstance(m, dict)
        ]

    return options, problems


def _apply_cpu_defaults(
    options: dict[str, Any], values: EnvValues, environ: Mapping[str, str], notes: list[str]
) -> None:
    """Settings that work with vLLM's CPU backend, where the user left them to defaults."""
    if options.get("dtype", "auto") == "auto":
        options["dtype"] = "float32"
        notes.append("CPU: dtype float32 (bfloat16 kernels crash on many CPUs)")
    if not values.is_set("ENFORCE_EAGER"):
        options["enforce_eager"] = True
        notes.append("CPU: enforce_eager (no compilation at start-up)")
    if "kv_cache_memory_bytes" not in options and not environ.get("VLLM_CPU_KVCACHE_SPACE"):
        options["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
        notes.append("CPU: KV cache of 1 GiB (set KV_CACHE_MEMORY_BYTES to change)")


def _check_loras(loras: Any, values: EnvValues) -> list[str]:
    shown = repr(values["LORA_MODULES"])
    if not isinstance(loras, list):
        return [f"LORA_MODULES={shown}: expected a JSON list of {{name, path}} objects"]
    problems = []
    for i, module in enumerate(loras):
        if not isinstance(module, dict) or not {"name", "path"} <= set(module):
            problems.append(f"LORA_MODULES[{i}]={module!r}: expected an object with name and path")
    if not values["ENABLE_LORA"]:
        problems.append("LORA_MODULES is set but ENABLE_LORA is off: set ENABLE_LORA=1")
    return problems


def _check_runtime_lora(values: EnvValues) -> list[str]:
    if values["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] and not values["ENABLE_LORA"]:
        return ["VLLM_ALLOW_RUNTIME_LORA_UPDATING is on but ENABLE_LORA is off: set ENABLE_LORA=1"]
    return []


def _autoscaling(values: EnvValues) -> tuple[Autoscaling, list[str]]:
    low, high = values["MIN_REPLICAS"], values["MAX_REPLICAS"]
    problems = []
    if high < low:
        problems.append(f"MAX_REPLICAS={high} is below MIN_REPLICAS={low}")
    target = min(values["TARGET_ONGOING_REQUESTS"], float(values["MAX_CONCURRENCY"]))
    scaling = Autoscaling(
        min_replicas=low,
        max_replicas=max(high, low),
        target_ongoing_requests=target,
        upscale_delay_s=values["UPSCALE_DELAY_S"],
        downscale_delay_s=values["DOWNSCALE_DELAY_S"],
    )
    return scaling, problems


def _flags_to_env_names(message: str, schema: EnvSchema) -> str:
    """Rewrite vLLM's `--flag-name` in a message as the env var that sets it."""
    by_dest = {v.target.vllm_dest: v.name for v in schema.variables if v.target.vllm_dest}

    def env_name(match: re.Match[str]) -> str:
        dest = match.group(1).replace("-", "_")
        return by_dest.get(dest, dest.upper())

    return re.sub(r"--([a-z][a-z0-9-]*)", env_name, message)


def _claimed_dests(schema: EnvSchema) -> set[str]:
    """Engine arguments the schema (or this module) sets whole; not read as passthrough."""
    claimed = {"model", "served_model_name", "lora_modules", "hf_overrides"}
    for var in schema.variables:
        if var.target.vllm_dest and "." not in var.target.vllm_dest:
            claimed.add(var.target.vllm_dest)
    return claimed


def _fold_dotted(options: dict[str, Any]) -> dict[str, Any]:
    """Merge `parent.key` options into a `parent` JSON object set as a whole, if any."""
    folded = dict(options)
    for dest in [d for d in options if "." in d]:
        parent, _, key = dest.partition(".")
        whole = folded.get(parent)
        if isinstance(whole, str) and whole.lstrip().startswith("{"):
            whole = json.loads(whole)
        if isinstance(whole, dict):
            folded[parent] = {**whole, key: folded.pop(dest)}
    return folded


def build_model_deployment(
    environ: Mapping[str, str],
    overrides: Mapping[str, Any],
    *,
    platform: Platform,
    schema: EnvSchema,
    deployment_name: str,
    vllm_args: EngineArguments,
) -> ModelDeployment:
    passthrough, problems = vllm_args.read_passthrough(environ, overrides, _claimed_dests(schema))
    try:
        values = read_env(environ, overrides, schema=schema, choices_for=vllm_args.choices_for)
    except ConfigError as exc:
        raise ConfigError(exc.problems + problems) from None
    notes = [f"{name} ignored: {reason}" for name, reason in values.ignored(schema)]

    options, option_problems = _vllm_options(values, schema, platform, notes, vllm_args)
    problems += option_problems
    options = _fold_dotted({**options, **passthrough})
    choose_tool_parser = False
    if values["ENABLE_AUTO_TOOL_CHOICE"]:
        if options.get("tool_call_parser"):
            options["enable_auto_tool_choice"] = True
        else:
            choose_tool_parser = True
    if platform == "cpu":
        _apply_cpu_defaults(options, values, environ, notes)

    placement: ReplicaPlacement | None = None
    try:
        placement = plan_replica(
            platform,
            values["TENSOR_PARALLEL_SIZE"],
            values["PIPELINE_PARALLEL_SIZE"],
            executor=options.get("distributed_executor_backend"),
            strategy=values["PLACEMENT_STRATEGY"],
            accelerator_type=values["GPU_TYPE"],
        )
        if placement.executor != "uni":
            options.setdefault("distributed_executor_backend", placement.executor)
    except ValueError as exc:
        problems.append(str(exc))
    autoscaling, scaling_problems = _autoscaling(values)
    problems += scaling_problems + _check_runtime_lora(values)

    argv = vllm_args.to_argv(options)
    if not problems:
        problems += vllm_args.check_argv(argv)
        problems = [_flags_to_env_names(p, schema) for p in problems]
    if problems:
        raise ConfigError(problems)
    assert placement is not None

    storage = resolve_storage(values)
    # The replica runs its request handlers on its main event loop, next to the engine's
    # output handler, as `vllm serve` does: Serve's default (a second loop in a thread) hands
    # every streamed chunk from one loop to the other, which costs a third of the throughput.
    env_vars = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}
    if not (environ.get("HF_HOME") or environ.get("HF_HUB_CACHE")):
        env_vars["HF_HUB_CACHE"] = storage.hf_cache
    for name in VLLM_ENV_SETTINGS:  # read by vLLM in the replica, from its environment
        if values[name]:
            env_vars[name] = "1"
    if values["ROUTING_POLICY"] != "least_loaded" and autoscaling.min_replicas == 0:
        notes.append(
            f"ROUTING_POLICY={values['ROUTING_POLICY']} needs MIN_REPLICAS>=1: with scale to "
            "zero, Serve's own least-loaded routing"
        )
    return ModelDeployment(
        deployment_name=deployment_name,
        model_name=values["MODEL_NAME"],
        served_model_names=options["served_model_name"],
        lora_names=[m["name"] for m in options.get("lora_modules", [])],
        vllm_args=options,
        vllm_argv=argv,
        platform=platform,
        storage=storage,
        serve=ServeOptions(
            max_concurrency=values["MAX_CONCURRENCY"],
            max_queued_requests=values["MAX_QUEUED_REQUESTS"],
            engine_stall_timeout_s=values["ENGINE_STALL_TIMEOUT_S"] or None,
            max_n=values["MAX_N"],
            autoscaling=autoscaling,
            placement=placement,
            check_placement=not values["SKIP_PLACEMENT_CHECK"],
            host=host_tuning(values, platform),
            routing=Routing(
                policy=values["ROUTING_POLICY"], max_imbalance=values["ROUTING_MAX_IMBALANCE"]
            ),
        ),
        env_vars=env_vars,
        jobs=JobOutputOptions(
            streaming=StreamingBatchSizes(
                max_batch_size=values["DEFAULT_BATCH_SIZE"],
                min_batch_size=values["DEFAULT_MIN_BATCH_SIZE"],
                growth_factor=values["DEFAULT_BATCH_SIZE_GROWTH_FACTOR"],
            ),
            raw_openai_output=values["RAW_OPENAI_OUTPUT"],
        ),
        notes=notes,
        runtime_lora_updating=values["VLLM_ALLOW_RUNTIME_LORA_UPDATING"],
        choose_tool_parser=choose_tool_parser,
    )


def build_plan(
    environ: Mapping[str, str] | None = None,
    args: Mapping[str, Any] | None = None,
    *,
    engine_args: EngineArguments,
    platform: Platform | None = None,
) -> AppPlan:
    """Validate the configuration and decide every deployment. Raises ConfigError.

    `engine_args`: vLLM's argument parser (`serve_app.engine.args`); `platform`: the one to
    plan for, by default that of the installed vLLM build."""
    environ = os.environ if environ is None else environ
    args = dict(args or {})
    schema = load_schema()
    platform = platform or engine_args.detect_platform()

    model_overrides = args.pop(MODELS_KEY, None) or [{}]
    problems: list[str] = []
    if not isinstance(model_overrides, list) or not all(
        isinstance(m, dict) for m in model_overrides
    ):
        raise ConfigError([f"args.{MODELS_KEY}: expected a list of mappings of settings"])
    engine_names = engine_args.engine_arg_names()
    problems += _check_args_keys(args, schema, engine_names)
    for index, extra in enumerate(model_overrides):
        problems += _check_args_keys(extra, schema, engine_names, where=f"{MODELS_KEY}[{index}]")

    models: list[ModelDeployment] = []
    for index, extra in enumerate(model_overrides):
        name = "LLM"
        if len(model_overrides) > 1:
            label = extra.get("OPENAI_SERVED_MODEL_NAME_OVERRIDE") or extra.get("MODEL_NAME")
            name = f"LLM-{_slug(str(label or index))}"
        try:
            models.append(
                build_model_deployment(
                    environ,
                    {**args, **extra},
                    platform=platform,
                    schema=schema,
                    deployment_name=name,
                    vllm_args=engine_args,
                )
            )
        except ConfigError as exc:
            prefix = f"{MODELS_KEY}[{index}]: " if len(model_overrides) > 1 else ""
            problems += [prefix + p for p in exc.problems]

    routes: dict[str, str] = {}
    for model in models:
        for served in model.model_names:
            if served in routes:
                problems.append(f"model name {served!r} is served by two deployments")
            routes[served] = model.deployment_name
    if problems:
        raise ConfigError(problems)

    common = read_env(environ, args, schema=schema)
    model_routes = ModelRoutes(
        routes=routes,
        default_deployment=models[0].deployment_name if len(models) == 1 else None,
    )
    api_key = common["API_KEY"]
    return AppPlan(
        ingress=IngressOptions(
            mode="llm" if len(models) == 1 else "router",
            models=model_routes,
            num_replicas=common["INGRESS_REPLICAS"],
            replica_wait_timeout_s=common["REPLICA_WAIT_TIMEOUT_S"],
            runsync_timeout_s=common["RUNSYNC_TIMEOUT_S"],
            endpoint_id=common["RUNPOD_ENDPOINT_ID"],
            max_request_bytes=common["MAX_REQUEST_BYTES"],
            job_queue_timeout_s=common["JOB_QUEUE_TIMEOUT_S"],
            log_job_polls=common["LOG_JOB_POLLS"],
            host=host_tuning(common, platform),
            api_key_sha256=hashlib.sha256(api_key.encode()).hexdigest() if api_key else None,
        ),
        jobs=JobQueueOptions(
            models=model_routes,
            retention_s=common["JOB_RETENTION_S"],
            num_replicas=common["JOB_QUEUE_REPLICAS"],
            store_url=common["JOB_STORE_URL"],
            store_dir=str(Path(resolve_storage(common).base_path, "jobs")),
            max_queued_jobs=common["MAX_QUEUED_JOBS"],
            max_output_bytes=common["MAX_JOB_OUTPUT_BYTES"],
            execution_timeout_s=common["JOB_EXECUTION_TIMEOUT_S"] or None,
            ttl_s=common["JOB_TTL_S"] or None,
        ),
        models=models,
    )


def _check_args_keys(
    args: Mapping[str, Any], schema: EnvSchema, engine_names: frozenset[str], where: str = "args"
) -> list[str]:
    """Keys of serve_config.yaml args must be settings; secrets belong in the environment."""
    problems = []
    for key in args:
        if key == MODELS_KEY and where == "args":
            continue
        var = schema.by_name.get(key)
        if var is None and key.lower() not in engine_names:
            problems.append(f"{where}.{key}: unknown setting (see configs/env_vars.yaml)")
        elif var is not None and var.secret:
            problems.append(
                f"{where}.{key}: secrets are read from the environment only, "
                "not from serve_config.yaml"
            )
        elif var is not None and var.target.ray:
            problems.append(
                f"{where}.{key}: read by Ray when it starts, so it cannot come from "
                "serve_config.yaml: set it in the environment that starts Ray"
            )
    return problems
