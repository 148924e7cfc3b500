"""The env-var schema in configs/ is complete, consistent with vLLM 0.32, and documented."""

from __future__ import annotations

import argparse

import pytest
from pydantic import ValidationError

from serve_app.config.schema import EnvVar, load_schema
from serve_app.engine import args as vllm_args
from serve_app.tooling.docs import check_reference

# Every variable of worker-vllm's README tables ("Environment Variables"): an existing
# worker-vllm endpoint config must keep working.
WORKER_VLLM_VARIABLES = [
    "MODEL_NAME",
    "TOKENIZER",
    "SKIP_TOKENIZER_INIT",
    "TOKENIZER_MODE",
    "TRUST_REMOTE_CODE",
    "DOWNLOAD_DIR",
    "LOAD_FORMAT",
    "HF_TOKEN",
    "DTYPE",
    "KV_CACHE_DTYPE",
    "QUANTIZATION_PARAM_PATH",
    "MAX_MODEL_LEN",
    "GUIDED_DECODING_BACKEND",
    "DISTRIBUTED_EXECUTOR_BACKEND",
    "WORKER_USE_RAY",
    "PIPELINE_PARALLEL_SIZE",
    "TENSOR_PARALLEL_SIZE",
    "MAX_PARALLEL_LOADING_WORKERS",
    "RAY_WORKERS_USE_NSIGHT",
    "ENABLE_PREFIX_CACHING",
    "DISABLE_SLIDING_WINDOW",
    "USE_V2_BLOCK_MANAGER",
    "NUM_LOOKAHEAD_SLOTS",
    "SEED",
    "NUM_GPU_BLOCKS_OVERRIDE",
    "MAX_NUM_BATCHED_TOKENS",
    "MAX_NUM_SEQS",
    "MAX_LOGPROBS",
    "DISABLE_LOG_STATS",
    "QUANTIZATION",
    "ROPE_SCALING",
    "ROPE_THETA",
    "TOKENIZER_POOL_SIZE",
    "TOKENIZER_POOL_TYPE",
    "TOKENIZER_POOL_EXTRA_CONFIG",
    "ENABLE_LORA",
    "MAX_LORAS",
    "MAX_LORA_RANK",
    "LORA_EXTRA_VOCAB_SIZE",
    "LORA_DTYPE",
    "LONG_LORA_SCALING_FACTORS",
    "MAX_CPU_LORAS",
    "FULLY_SHARDED_LORAS",
    "LORA_MODULES",
    "SCHEDULER_DELAY_FACTOR",
    "ENABLE_CHUNKED_PREFILL",
    "SPECULATIVE_MODEL",
    "NUM_SPECULATIVE_TOKENS",
    "SPECULATIVE_DRAFT_TENSOR_PARALLEL_SIZE",
    "SPECULATIVE_MAX_MODEL_LEN",
    "SPECULATIVE_DISABLE_BY_BATCH_SIZE",
    "NGRAM_PROMPT_LOOKUP_MAX",
    "NGRAM_PROMPT_LOOKUP_MIN",
    "SPEC_DECODING_ACCEPTANCE_METHOD",
    "TYPICAL_ACCEPTANCE_SAMPLER_POSTERIOR_THRESHOLD",
    "TYPICAL_ACCEPTANCE_SAMPLER_POSTERIOR_ALPHA",
    "MODEL_LOADER_EXTRA_CONFIG",
    "PREEMPTION_MODE",
    "PREEMPTION_CHECK_PERIOD",
    "PREEMPTION_CPU_CAPACITY",
    "DISABLE_LOGGING_REQUEST",
    "MAX_LOG_LEN",
    "TOKENIZER_NAME",
    "TOKENIZER_REVISION",
    "CUSTOM_CHAT_TEMPLATE",
    "GPU_MEMORY_UTILIZATION",
    "BLOCK_SIZE",
    "SWAP_SPACE",
    "ENFORCE_EAGER",
    "MAX_SEQ_LEN_TO_CAPTURE",
    "DISABLE_CUSTOM_ALL_REDUCE",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_MIN_BATCH_SIZE",
    "DEFAULT_BATCH_SIZE_GROWTH_FACTOR",
    "RAW_OPENAI_OUTPUT",
    "OPENAI_SERVED_MODEL_NAME_OVERRIDE",
    "OPENAI_RESPONSE_ROLE",
    "MAX_CONCURRENCY",
    "DISABLE_LOG_REQUESTS",
]


def test_every_worker_vllm_variable_is_in_the_schema():
    schema = load_schema()
    missing = [name for name in WORKER_VLLM_VARIABLES if name not in schema.by_name]
    assert missing == []


def test_every_variable_has_a_category_description_and_target():
    schema = load_schema()
    titles = {c.title for c in schema.categories}
    assert {"LLM Settings", "Tokenizer Settings", "System and Parallelism Settings"} <= titles
    assert {"Streaming Batch Size Settings", "OpenAI Settings", "Serverless Settings"} <= titles
    for var in schema.variables:
        assert var.description.strip(), var.name
        if var.target.ignored:
            assert var.target.ignored.rstrip().endswith("."), var.name  # a full reason


def test_vllm_targets_are_real_vllm_serve_arguments_with_compatible_choices():
    schema = load_schema()
    actions = {a.dest: a for a in vllm_args.serve_parser()._actions}
    for var in schema.variables:
        dest = var.target.vllm_dest
        if dest is None:
            continue
        action = actions.get(dest.partition(".")[0])
        assert action is not None, f"{var.name} -> {dest} is not a vLLM serve argument"
        if "." not in dest and var.choices and action.choices is not None:
            assert set(var.choices) <= set(action.choices), var.name
        if var.type == "bool" and "." not in dest:
            assert isinstance(
                action,
                argparse.BooleanOptionalAction | argparse._StoreTrueAction,
            ), var.name


def test_the_variable_reference_is_generated_from_the_schema():
    assert check_reference(), "docs/configuration.md is out of date: run `make docs`"


def test_only_rays_own_settings_may_keep_rays_lower_case_spelling():
    variable = {"category": "ray", "type": "int", "serverless": False, "description": "x"}
    assert EnvVar(name="RAY_worker_niceness", target="ray", **variable)
    with pytest.raises(ValidationError, match="only Ray's own settings"):
        EnvVar(name="RAY_worker_niceness", target="app", **variable)
    for name in ("LLM_engine", "ray_WORKER", "RAY_Worker"):
        with pytest.raises(ValidationError, match="is not UPPER_SNAKE"):
            EnvVar(name=name, target="ray", **variable)
