"""Configuration: env vars -> validated settings -> vLLM arguments and Serve options (no engine)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from serve_app.__main__ import warn_if_open, with_scaling
from serve_app.config.env import read_env
from serve_app.config.errors import ConfigError
from serve_app.config.plan import (
    CONTROL_HEADROOM,
    CPU_KV_CACHE_BYTES,
    build_plan,
    placement_problems,
)
from serve_app.config.ray_env import loopback_haproxy, ray_env_defaults, serve_config_for
from serve_app.engine import args as vllm_args

ROOT = Path(__file__).resolve().parents[2]


def plan_of(env: dict[str, str], args: dict | None = None, platform: str = "cpu"):
    return build_plan(env, args, engine_args=vllm_args, platform=platform)


def problems_of(env: dict[str, str], args: dict | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        plan_of(env, args)
    return info.value.problems


def test_defaults_serve_the_default_model_with_cpu_settings():
    model = plan_of({}).models[0]
    assert model.model_name == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert model.served_model_names == ["HuggingFaceTB/SmolLM2-135M-Instruct"]
    args = model.vllm_args
    assert args["dtype"] == "float32"
    assert args["enforce_eager"] is True
    assert args["kv_cache_memory_bytes"] == CPU_KV_CACHE_BYTES
    assert model.serve.max_concurrency == 300  # MAX_CONCURRENCY default
    assert model.serve.max_queued_requests == 100  # MAX_QUEUED_REQUESTS default


def test_a_replica_no_node_holds_is_named_with_what_to_change():
    plan = plan_of({"TENSOR_PARALLEL_SIZE": "4"}, platform="gpu")
    nodes = [{"CPU": 32.0, "GPU": 2.0}, {"CPU": 32.0, "GPU": 2.0}]
    (problem,) = placement_problems(plan, nodes)
    assert problem.startswith("LLM (HuggingFaceTB/SmolLM2-135M-Instruct): an LLM replica needs")
    assert "GPU: 4} on one node" in problem and "Lower TENSOR_PARALLEL_SIZE" in problem
    assert placement_problems(plan, [{"CPU": 32.0, "GPU": 4.0}]) == []
    unchecked = plan_of({"TENSOR_PARALLEL_SIZE": "4", "SKIP_PLACEMENT_CHECK": "1"}, platform="gpu")
    assert placement_problems(unchecked, nodes) == []  # the cluster's autoscaler adds nodes


def test_gpu_plan_keeps_model_dtype_and_cuda_graphs():
    args = plan_of({}, platform="gpu").models[0].vllm_args
    assert "dtype" not in args
    assert "enforce_eager" not in args
    assert "kv_cache_memory_bytes" not in args
    assert args["gpu_memory_utilization"] == 0.95  # worker-vllm's default, not vLLM's 0.92


def test_every_bad_variable_is_reported_at_once():
    problems = problems_of(
        {
            "MAX_MODEL_LEN": "abc",
            "ENABLE_PREFIX_CACHING": "maybe",
            "DTYPE": "fp64",
            "MAX_CONCURRENCY": "0",
            "LORA_MODULES": "[not json",
            "PERFORMANCE_MODE": "fastest",  # a vLLM engine arg the schema does not list
        }
    )
    assert "MAX_MODEL_LEN='abc': expected an integer" in problems
    assert any(p.startswith("ENABLE_PREFIX_CACHING='maybe': expected a boolean") for p in problems)
    assert any(p.startswith("DTYPE='fp64': expected one of: auto, half") for p in problems)
    assert "MAX_CONCURRENCY='0': must be at least 1" in problems
    assert any(p.startswith("LORA_MODULES='[not json': expected JSON") for p in problems)
    assert any(
        p.startswith("PERFORMANCE_MODE='fastest': expected one of: balanced") for p in problems
    )
    assert len(problems) == 6


def test_tool_calls_are_on_by_default_with_a_parser_chosen_by_each_replica():
    (model,) = plan_of({}).models
    assert model.choose_tool_parser and "tool_call_parser" not in model.vllm_args
    (model,) = plan_of({"TOOL_CALL_PARSER": "mistral"}).models
    assert not model.choose_tool_parser
    assert model.vllm_args["tool_call_parser"] == "mistral"
    assert model.vllm_args["enable_auto_tool_choice"] is True
    (model,) = plan_of({"ENABLE_AUTO_TOOL_CHOICE": "0"}).models
    assert not model.choose_tool_parser and "enable_auto_tool_choice" not in model.vllm_args


def test_cross_field_checks_name_the_env_vars():
    assert problems_of({"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1"}) == [
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING is on but ENABLE_LORA is off: set ENABLE_LORA=1"
    ]
    assert problems_of({"LORA_MODULES": '[{"name": "a", "path": "/a"}]'}) == [
        "LORA_MODULES is set but ENABLE_LORA is off: set ENABLE_LORA=1"
    ]
    (problem,) = problems_of({"TOOL_CALL_PARSER": "no-such-parser"})
    assert problem.startswith("TOOL_CALL_PARSER='no-such-parser': expected one of:")
    assert "hermes" in problem


def test_seed_variables_map_onto_vllm_arguments():
    env = {
        "MAX_MODEL_LEN": "4096",
        "ENABLE_PREFIX_CACHING": "0",
        "GUIDED_DECODING_BACKEND": "xgrammar",
        "TOKENIZER_NAME": "org/tokenizer",
        "CUSTOM_CHAT_TEMPLATE": "{{ messages[0]['content'] }}",
        "OPENAI_SERVED_MODEL_NAME_OVERRIDE": "my-model",
        "OPENAI_RESPONSE_ROLE": "bot",
        "DISABLE_LOG_REQUESTS": "0",
        "MAX_LOG_LEN": "100",
        "SPECULATIVE_MODEL": "org/draft",
        "NUM_SPECULATIVE_TOKENS": "3",
        "ROPE_THETA": "500000",
    }
    model = plan_of(env).models[0]
    ns = vllm_args.parse_argv(model.vllm_argv)  # what the replica builds its engine from
    assert ns.max_model_len == 4096
    assert ns.enable_prefix_caching is False
    assert ns.structured_outputs_config.backend == "xgrammar"
    assert ns.tokenizer == "org/tokenizer"
    assert ns.chat_template == "{{ messages[0]['content'] }}"
    assert ns.served_model_name == ["my-model"]
    assert ns.response_role == "bot"
    assert ns.enable_log_requests is True
    assert ns.max_log_len == 100
    assert ns.speculative_config == {"model": "org/draft", "num_speculative_tokens": 3}
    assert ns.hf_overrides == {"rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}}
    assert model.served_model_names == ["my-model"]


def test_any_other_engine_argument_is_typed_by_vllm():
    ns = vllm_args.parse_argv(
        plan_of(
            {
                "KV_CACHE_MEMORY_BYTES": "2G",
                "ASYNC_SCHEDULING": "yes",
                "MAX_NUM_PARTIAL_PREFILLS": "",
            }
        )
        .models[0]
        .vllm_argv
    )
    assert ns.kv_cache_memory_bytes == 2 * 1024**3
    assert ns.async_scheduling is True
    (problem,) = problems_of({"KV_CACHE_MEMORY_BYTES": "lots"})
    assert (
        problem
        == "KV_CACHE_MEMORY_BYTES='lots': expected an integer (suffixes like 1k, 2M allowed)"
    )


def test_nested_engine_configs_merge_with_the_seed_variables_that_set_one_key():
    env = {
        "STRUCTURED_OUTPUTS_CONFIG": '{"disable_any_whitespace": true}',
        "GUIDED_DECODING_BACKEND": "guidance",
    }
    config = vllm_args.parse_argv(plan_of(env).models[0].vllm_argv).structured_outputs_config
    assert (config.backend, config.disable_any_whitespace) == ("guidance", True)
    # vLLM checks the merged object, and its reason reaches the user.
    (problem,) = problems_of({**env, "GUIDED_DECODING_BACKEND": "outlines"})
    assert "disable_any_whitespace is only supported for xgrammar and guidance" in problem
    assert "STRUCTURED_OUTPUTS_CONFIG" in problem


def test_unrelated_env_vars_that_collide_with_engine_fields_are_not_read():
    # Launchers set these for torch.distributed / logging; they must not reach the engine.
    args = plan_of({"MASTER_PORT": "x", "LOG_LEVEL": "info", "MODEL": "other"}).models[0].vllm_args
    assert "master_port" not in args and "log_level" not in args
    assert args["model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_removed_seed_variables_are_accepted_and_reported_as_ignored():
    model = plan_of(
        {"SWAP_SPACE": "8", "USE_V2_BLOCK_MANAGER": "1", "NUM_LOOKAHEAD_SLOTS": "2"}
    ).models[0]
    ignored = [n for n in model.notes if " ignored: " in n]
    assert [n.split(" ")[0] for n in ignored] == [
        "NUM_LOOKAHEAD_SLOTS",
        "SWAP_SPACE",
        "USE_V2_BLOCK_MANAGER",
    ]
    assert all(n.split(" ignored: ")[1] for n in ignored)  # each says why
    assert "swap" not in " ".join(model.vllm_argv)


def test_aliases_and_conflicts():
    values = read_env({"DISABLE_LOGGING_REQUEST": "1", "TOKENIZER_NAME": "a"})
    assert values["DISABLE_LOG_REQUESTS"] is True and values["TOKENIZER"] == "a"
    with pytest.raises(ConfigError, match="TOKENIZER_NAME='a' and TOKENIZER='b'"):
        read_env({"TOKENIZER_NAME": "a", "TOKENIZER": "b"})


def test_ray_settings_come_from_where_ray_starts_not_from_the_config():
    problems = problems_of({}, {"RAY_SERVE_ENABLE_HA_PROXY": "1"})
    assert problems == [
        "args.RAY_SERVE_ENABLE_HA_PROXY: read by Ray when it starts, so it cannot come from "
        "serve_config.yaml: set it in the environment that starts Ray"
    ]
    defaults = {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY": "1",
        "HAPROXY_SIDE_PORTS_PUBLIC": "0",
        "RAY_worker_niceness": "0",
        "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_LOG_TO_STDERR": "1",
    }
    applied = ray_env_defaults({})
    wrapper = applied.pop("RAY_SERVE_HAPROXY_BINARY_PATH")  # HAProxy's side ports on loopback
    assert applied == defaults and Path(wrapper).name.startswith("haproxy-loopback")
    without = ray_env_defaults({"RAY_SERVE_ENABLE_HA_PROXY": "0"})
    assert "RAY_SERVE_ENABLE_HA_PROXY" not in without
    assert "RAY_SERVE_HAPROXY_BINARY_PATH" not in without
    result = run_cli("ray-env", env=dict.fromkeys([*defaults, "RAY_SERVE_HAPROXY_BINARY_PATH"], ""))
    expected = {**defaults, "RAY_SERVE_HAPROXY_BINARY_PATH": wrapper}
    assert result.stdout == "".join(f"export {k}={v}\n" for k, v in expected.items())


def test_host_and_port_become_the_http_options_serve_starts_with(tmp_path):
    config = {"http_options": {"host": "0.0.0.0", "port": 8000}, "applications": []}
    assert serve_config_for(config, {}) == config
    launch = serve_config_for(config, {"HOST": "127.0.0.1", "PORT": "9001"})
    assert launch["http_options"] == {"host": "127.0.0.1", "port": 9001}
    assert problems_of({}, {"PORT": 9001})[0].startswith("args.PORT: read by Ray when it starts")
    result = run_cli("launch-config", env={"PORT": "9002", "HOST": ""})
    path = Path(result.stdout.strip())
    assert path != ROOT / "serve_config.yaml"
    assert yaml.safe_load(path.read_text())["http_options"] == {"host": "0.0.0.0", "port": 9002}
    path.unlink()
    assert (
        run_cli("launch-config", env={"PORT": "", "HOST": ""})
        .stdout.strip()
        .endswith("serve_config.yaml")
    )


def test_an_endpoint_open_beyond_this_machine_without_api_key_is_warned_about(capsys):
    assert warn_if_open({"host": "0.0.0.0", "port": 8000}, {})
    warning = capsys.readouterr().err
    assert "0.0.0.0:8000 without API_KEY" in warning and "Set API_KEY=" in warning
    assert not warn_if_open({"host": "127.0.0.1", "port": 8000}, {})
    assert not warn_if_open({"host": "0.0.0.0", "port": 8000}, {"API_KEY": "secret"})
    assert capsys.readouterr().err == ""


def test_haproxy_side_listeners_are_moved_to_loopback_by_a_wrapper(tmp_path):
    real = tmp_path / "haproxy"
    real.write_text('#!/bin/sh\nfor a in "$@"; do echo "ARG $a"; done\ncat "$3"\n')
    real.chmod(0o755)
    env = {"RAY_SERVE_HAPROXY_BINARY_PATH": str(real)}
    wrapper = loopback_haproxy(env, tmp_path / "cache")
    assert wrapper and wrapper != str(real)
    assert loopback_haproxy({"RAY_SERVE_HAPROXY_BINARY_PATH": wrapper}, tmp_path) == wrapper
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        "frontend prometheus\n    bind :9101\nfrontend http_frontend\n"
        "    bind 0.0.0.0:8000\n    bind 127.0.0.1:8001\nlisten stats\n  bind *:8404\n"
    )
    ran = subprocess.run([wrapper, "-db", "-f", str(config), "-sf", "123"],
                         capture_output=True, text=True, timeout=30, check=True)  # fmt: skip
    assert f"ARG {config}.loopback" in ran.stdout and "ARG -sf" in ran.stdout
    assert "bind 127.0.0.1:9101" in ran.stdout and "bind 127.0.0.1:8404" in ran.stdout
    assert "bind 0.0.0.0:8000" in ran.stdout  # the endpoint itself as configured
    assert ray_env_defaults({"RAY_SERVE_ENABLE_HA_PROXY": "1", **env, "HAPROXY_SIDE_PORTS_PUBLIC":
                             "1"}).get("RAY_SERVE_HAPROXY_BINARY_PATH") is None  # fmt: skip


def test_cluster_deploys_carry_each_llm_deployments_scaling_and_scale_sets_its_bounds():
    models = {"models": [{"MODEL_NAME": "a/b"}, {"MODEL_NAME": "c/d"}]}
    plan = plan_of({"TARGET_ONGOING_REQUESTS": "12"}, models)
    app = {"name": "llm", "args": {}, "deployments": [{"name": "LLM-a-b", "user_config": {"x": 1}}]}
    deployed = with_scaling(app, plan, None)
    assert app["args"] == deployed["args"]  # args unchanged: Serve applies it in place
    assert [d["name"] for d in deployed["deployments"]] == ["LLM-a-b", "LLM-c-d"]
    first = deployed["deployments"][0]
    assert first["user_config"] == {"x": 1} and first["num_replicas"] == "auto"
    assert first["autoscaling_config"]["target_ongoing_requests"] == 12
    assert (
        first["autoscaling_config"]["min_replicas"],
        first["autoscaling_config"]["max_replicas"],
    ) == (1, 1)
    scaled = with_scaling(app, plan, (0, 3))["deployments"]
    assert {(d["autoscaling_config"]["min_replicas"], d["autoscaling_config"]["max_replicas"])
            for d in scaled} == {(0, 3)}  # fmt: skip
    with pytest.raises(ConfigError, match="expected 0 <= MIN <= MAX"):
        with_scaling(app, plan, (3, 2))


def test_request_logging_follows_worker_vllm_defaults_and_variables():
    assert plan_of({}).models[0].vllm_args["enable_log_requests"] is True  # worker-vllm logs
    quiet = plan_of({"DISABLE_LOG_REQUESTS": "1", "MAX_LOG_LEN": "100"}).models[0].vllm_args
    assert quiet["enable_log_requests"] is False
    assert quiet["max_log_len"] == 100


def test_args_override_env_and_are_checked():
    model = plan_of({"MAX_MODEL_LEN": "1024"}, {"MAX_MODEL_LEN": 2048}).models[0]
    assert model.vllm_args["max_model_len"] == 2048
    problems = problems_of({}, {"MAX_MODEL_LEN": "x", "NO_SUCH_SETTING": 1, "HF_TOKEN": "hf_x"})
    assert "args.NO_SUCH_SETTING: unknown setting (see configs/env_vars.yaml)" in problems
    assert any(
        p.startswith("args.HF_TOKEN: secrets are read from the environment") for p in problems
    )
    assert "MAX_MODEL_LEN='x': expected an integer" in problems


def test_empty_values_count_as_unset():
    # RunPod's UI sends empty strings for fields the user did not touch.
    assert (
        plan_of({"MAX_MODEL_LEN": "", "DTYPE": "", "MAX_CONCURRENCY": " "})
        .models[0]
        .vllm_args["dtype"]
        == "float32"
    )


def test_lora_modules_default_to_the_served_model_as_base():
    model = plan_of(
        {
            "ENABLE_LORA": "1",
            "LORA_MODULES": '[{"name": "sql", "path": "/adapters/sql"}]',
            "OPENAI_SERVED_MODEL_NAME_OVERRIDE": "base",
        }
    ).models[0]
    assert model.lora_names == ["sql"]
    assert model.model_names == ["base", "sql"]
    (module,) = vllm_args.parse_argv(model.vllm_argv).lora_modules
    assert (module.name, module.path, module.base_model_name) == ("sql", "/adapters/sql", "base")


def test_serve_admits_generations_and_their_line_plus_room_for_short_requests():
    env = {"MAX_CONCURRENCY": "64", "MAX_QUEUED_REQUESTS": "10"}
    options = plan_of(env).models[0].serve.deployment_options()
    assert options["max_ongoing_requests"] == 64 + 10 + CONTROL_HEADROOM
    assert options["ray_actor_options"] == {"num_cpus": 1.0}


def test_secrets_never_appear_in_the_plan(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_supersecret")
    plan = build_plan(engine_args=vllm_args, platform="cpu")
    assert "hf_supersecret" not in json.dumps(plan.model_dump(mode="json"))


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in __import__("os").environ.items() if k not in {"MODEL_NAME"}}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "serve_app", *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_plan_command_prints_the_deployments_as_json():
    result = run_cli(
        "plan", env={"MAX_MODEL_LEN": "1024", "MAX_CONCURRENCY": "7", "MAX_QUEUED_REQUESTS": "3"}
    )
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)["applications"]["llm"]
    (model,) = plan["models"]
    assert model["vllm_args"]["max_model_len"] == 1024
    assert model["serve"]["max_concurrency"] == 7
    assert model["serve"]["max_ongoing_requests"] == 7 + 3 + CONTROL_HEADROOM
    assert model["env_vars"]["RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"] == "0"
    assert plan["ingress"]["mode"] == "llm"
    assert model["serve"]["placement"]["ray_actor_options"] == {"num_cpus": 1.0}
    assert "--max-model-len" in model["vllm_argv"]
    assert plan["ingress"]["models"]["routes"] == {"HuggingFaceTB/SmolLM2-135M-Instruct": "LLM"}


def test_plan_command_shows_the_gpu_plan_on_any_machine():
    """A GPU cluster planned from a machine without GPUs: bundles, strategy, executor, and
    whether a replica fits the nodes' GPUs."""
    env = {"TENSOR_PARALLEL_SIZE": "4"}
    result = run_cli("plan", "--platform", "gpu", "--gpus-per-node", "2", env=env)
    assert result.returncode == 0, result.stderr
    (model,) = json.loads(result.stdout)["applications"]["llm"]["models"]
    placement = model["serve"]["placement"]
    assert model["platform"] == "gpu" and placement["executor"] == "ray"
    assert placement["placement_group_bundles"] == [{"CPU": 1.0, "GPU": 1.0}] + [{"GPU": 1.0}] * 3
    assert placement["placement_group_strategy"] == "STRICT_PACK"
    assert "--tensor-parallel-size" in model["vllm_argv"] and "float32" not in model["vllm_argv"]
    check = model["placement_check"]
    assert check["fits"] is False and "GPU: 4} on one node" in check["problem"]
    result = run_cli("plan", "--platform", "gpu", "--gpus-per-node", "4", env=env)
    (model,) = json.loads(result.stdout)["applications"]["llm"]["models"]
    assert model["placement_check"] == {"gpus_per_node": 4, "fits": True, "problem": None}


def test_plan_command_with_bad_env_exits_2_listing_every_problem():
    result = run_cli("plan", env={"MAX_MODEL_LEN": "abc", "TENSOR_PARALLEL_SIZE": "two"})
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Invalid configuration (2 problems):" in result.stderr
    assert "MAX_MODEL_LEN='abc': expected an integer" in result.stderr
    assert "TENSOR_PARALLEL_SIZE='two': expected an integer" in result.stderr
    assert "Traceback" not in result.stderr


def test_fixed_replicas_unless_autoscaling_is_asked_for():
    options = plan_of({}).models[0].serve.deployment_options()
    assert options["num_replicas"] == 1 and "autoscaling_config" not in options
    options = (
        plan_of({"MIN_REPLICAS": "0", "MAX_REPLICAS": "4", "UPSCALE_DELAY_S": "5"})
        .models[0]
        .serve.deployment_options()
    )
    assert "num_replicas" not in options
    config = options["autoscaling_config"]
    assert (config["min_replicas"], config["max_replicas"], config["initial_replicas"]) == (0, 4, 0)
    assert config["target_ongoing_requests"] == 64  # high: vLLM batches internally
    assert config["upscale_delay_s"] == 5
    # the target never exceeds what a replica accepts
    config = plan_of({"MAX_REPLICAS": "2", "MAX_CONCURRENCY": "8"}).models[0].serve
    assert config.autoscaling.target_ongoing_requests == 8
    assert problems_of({"MIN_REPLICAS": "3", "MAX_REPLICAS": "2"}) == [
        "MAX_REPLICAS=2 is below MIN_REPLICAS=3"
    ]


def test_gpu_parallelism_plan_uses_a_placement_group_and_the_ray_executor():
    model = plan_of(
        {"TENSOR_PARALLEL_SIZE": "2", "PIPELINE_PARALLEL_SIZE": "2", "GPU_TYPE": "A100-80G"},
        platform="gpu",
    ).models[0]
    options = model.serve.deployment_options()
    assert len(options["placement_group_bundles"]) == 4
    assert options["placement_group_strategy"] == "PACK"
    assert model.vllm_args["distributed_executor_backend"] == "ray"
    ns = vllm_args.parse_argv(model.vllm_argv)
    assert (ns.tensor_parallel_size, ns.pipeline_parallel_size) == (2, 2)


def test_several_models_become_several_deployments_routed_by_name():
    plan = plan_of(
        {"MAX_MODEL_LEN": "1024"},
        {
            "models": [
                {"MODEL_NAME": "org/a", "ENABLE_LORA": "1",
                 "LORA_MODULES": '[{"name": "a-sql", "path": "/x"}]'},
                {"MODEL_NAME": "org/b", "OPENAI_SERVED_MODEL_NAME_OVERRIDE": "b",
                 "MAX_REPLICAS": 3},
            ]
        },
    )  # fmt: skip
    assert [m.deployment_name for m in plan.models] == ["LLM-org-a", "LLM-b"]
    assert plan.ingress.models.routes == {"org/a": "LLM-org-a", "a-sql": "LLM-org-a", "b": "LLM-b"}
    assert plan.ingress.models.default_deployment is None  # requests must name their model
    assert plan.ingress.mode == "router"  # one HTTP ingress routes to both by `model`
    assert all(m.vllm_args["max_model_len"] == 1024 for m in plan.models)  # shared settings
    assert plan.models[1].serve.autoscaling.max_replicas == 3
    assert (
        "models[1]: MAX_MODEL_LEN='x'"
        in problems_of({}, {"models": [{}, {"MAX_MODEL_LEN": "x"}]})[0]
    )


def test_host_tuning_is_on_with_vllms_cpu_backend_and_off_on_gpus_unless_set():
    cpu = plan_of({}).models[0].serve.host
    assert (cpu.replica_niceness, cpu.engine_niceness) == (0, None)  # as started
    assert cpu.coalesce_http_writes and cpu.engine_core_on_worker_cpus
    assert plan_of({}).ingress.host == cpu  # the router ingress: its HTTP writes
    gpu = plan_of({}, platform="gpu").models[0].serve.host
    assert (gpu.replica_niceness, gpu.engine_niceness) == (0, None)  # left as started
    assert not gpu.coalesce_http_writes
    assert not gpu.engine_core_on_worker_cpus
    asked = {
        "LLM_REPLICA_NICENESS": "15",
        "LLM_ENGINE_NICENESS": "0",
        "COALESCE_HTTP_WRITES": "1",
        "ENGINE_CORE_ON_WORKER_CPUS": "1",
    }
    for platform in ("cpu", "gpu"):
        host = plan_of(asked, platform=platform).models[0].serve.host
        assert (host.replica_niceness, host.engine_niceness) == (15, 0)
        assert host.coalesce_http_writes
        assert host.engine_core_on_worker_cpus
    assert (
        not plan_of({"ENGINE_CORE_ON_WORKER_CPUS": "0"})
        .models[0]
        .serve.host.engine_core_on_worker_cpus
    )
    removed = plan_of({"PIN_SERVING_TO_RESERVED_CPUS": "1"}).models[0]
    assert "PIN_SERVING_TO_RESERVED_CPUS ignored: removed; " in " ".join(removed.notes)
    assert problems_of({"LLM_REPLICA_NICENESS": "-21", "LLM_ENGINE_NICENESS": "-30"}) == [
        "LLM_REPLICA_NICENESS='-21': must be at least -20",
        "LLM_ENGINE_NICENESS='-30': must be at least -20",
    ]
    assert problems_of({"COALESCE_HTTP_WRITES": "sometimes"})[0].startswith(
        "COALESCE_HTTP_WRITES='sometimes'"
    )
    assert "host" not in plan_of({}).models[0].serve.deployment_options()


def test_job_polls_are_left_out_of_the_access_log_unless_asked_for():
    assert plan_of({}).ingress.log_job_polls is False
    assert plan_of({"LOG_JOB_POLLS": "1"}).ingress.log_job_polls is True
    assert (
        plan_of(
            {"LOG_JOB_POLLS": "on"}, {"models": [{"MODEL_NAME": "org/a"}, {"MODEL_NAME": "org/b"}]}
        ).ingress.log_job_polls
        is True
    )  # the router's too
    assert problems_of({"LOG_JOB_POLLS": "maybe"})[0].startswith("LOG_JOB_POLLS='maybe'")


def test_routing_policy_sets_the_request_router_of_deployments_with_replicas_to_choose_from():
    def options(env: dict[str, str]) -> dict:
        return plan_of(env).models[0].serve.deployment_options()

    router = options({"MAX_REPLICAS": "2"})["request_router_config"]
    assert router == {
        "request_router_class": "serve_app.routing.serve_router:PolicyRouter",
        "request_router_kwargs": {"policy": "prefix", "max_imbalance": 4},
    }
    two = {"MIN_REPLICAS": "2", "MAX_REPLICAS": "2"}
    kwargs = options({**two, "ROUTING_POLICY": "round_robin", "ROUTING_MAX_IMBALANCE": "1"})
    assert kwargs["request_router_config"]["request_router_kwargs"] == {
        "policy": "round_robin",
        "max_imbalance": 1,
    }
    # Serve's own routing: one replica (nothing to choose), least_loaded, or scale to zero
    assert "request_router_config" not in options({})
    assert "request_router_config" not in options({**two, "ROUTING_POLICY": "least_loaded"})
    zero = plan_of({"MIN_REPLICAS": "0", "MAX_REPLICAS": "2"}).models[0]
    assert "request_router_config" not in zero.serve.deployment_options()
    assert any("ROUTING_POLICY=prefix needs MIN_REPLICAS>=1" in note for note in zero.notes)
    assert problems_of({"ROUTING_POLICY": "sticky"})[0].startswith("ROUTING_POLICY='sticky'")
