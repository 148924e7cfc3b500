"""The vLLM APIs this application relies on, checked once before they are used.

vLLM moves its Python API between releases. Instead of failing deep in a request with an
ImportError or AttributeError, the adapter checks at start-up (and `plan` when it first asks
vLLM's parser) that every name it uses is there and that the functions it calls still take the
arguments it passes, and otherwise fails with one message naming the installed vLLM, what is
missing and the version this release supports.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Iterable

# The vLLM release this application is built and tested against (pinned in pyproject.toml).
SUPPORTED_VLLM = "0.32.0"

# Every vLLM name the adapter uses, as `module.attribute[.attribute]`.
REQUIRED = (
    "vllm.__version__",
    "vllm.AsyncLLMEngine.from_vllm_config",
    "vllm.AsyncLLMEngine.check_health",
    "vllm.AsyncLLMEngine.get_supported_tasks",
    "vllm.AsyncLLMEngine.get_num_unfinished_requests",
    "vllm.AsyncLLMEngine.shutdown",
    "vllm.AsyncLLMEngine.do_log_stats",
    "vllm.AsyncLLMEngine.errored",
    "vllm.v1.engine.core_client.AsyncMPClient.get_output_async",  # the stall watch's step clock
    "vllm.engine.arg_utils.AsyncEngineArgs.from_cli_args",
    "vllm.engine.arg_utils.AsyncEngineArgs.create_engine_config",
    "vllm.entrypoints.launchers.app.build_app",
    "vllm.entrypoints.launchers.api_server.app_state.init_app_state",
    "vllm.entrypoints.launchers.cli_args.make_arg_parser",
    "vllm.entrypoints.launchers.cli_args.validate_parsed_serve_args",
    "vllm.entrypoints.serve.exception_handling.handlers.validation.clean_loc_for_param",
    "vllm.utils.argparse_utils.FlexibleArgumentParser",
    "vllm.entrypoints.openai.chat_completion.serving.OpenAIServingChat._make_parser",
    "vllm.usage.usage_lib.UsageContext.OPENAI_API_SERVER",
    "vllm.platforms.current_platform",
    "vllm.utils.gc_utils.freeze_gc_heap",
    "vllm.envs.VLLM_LOG_STATS_INTERVAL",
    "vllm.v1.metrics.loggers.PrometheusStatLogger",
    "vllm.tool_parsers.ToolParserManager.list_registered",
    "vllm.reasoning.ReasoningParserManager.list_registered",
    "vllm.model_executor.layers.quantization.QUANTIZATION_METHODS",
    "vllm.config.model.TokenizerMode",
)

# Functions the adapter calls with these parameters (by name, in this order).
SIGNATURES = {
    "vllm.AsyncLLMEngine.shutdown": ("self", "timeout"),
    "vllm.entrypoints.launchers.app.build_app": ("args", "supported_tasks", "model_config"),
    "vllm.entrypoints.openai.chat_completion.serving.OpenAIServingChat._make_parser": (
        "self",
        "request",
    ),
    "vllm.entrypoints.launchers.api_server.app_state.init_app_state": (
        "engine_client",
        "state",
        "args",
        "supported_tasks",
    ),
}


class IncompatibleVLLM(RuntimeError):
    """The installed vLLM lacks an API this application uses."""


def resolve(path: str) -> object:
    """The object at a dotted `path`: the longest importable module, then attributes."""
    parts = path.split(".")
    for split in range(len(parts), 0, -1):
        try:
            found: object = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for name in parts[split:]:
            found = getattr(found, name)  # AttributeError: missing
        return found
    raise ImportError(f"no module {parts[0]!r}")


def problems(
    required: Iterable[str] | None = None, signatures: dict[str, tuple[str, ...]] | None = None
) -> list[str]:
    """What is missing or changed, one line each (empty when all is there)."""
    found = []
    for path in REQUIRED if required is None else required:
        try:
            resolve(path)
        except (ImportError, AttributeError) as exc:
            found.append(f"{path} ({type(exc).__name__}: {exc})")
    for path, expected in (SIGNATURES if signatures is None else signatures).items():
        try:
            parameters = tuple(inspect.signature(resolve(path)).parameters)  # type: ignore[arg-type]
        except (ImportError, AttributeError, TypeError, ValueError):
            continue  # reported above
        if parameters[: len(expected)] != expected:
            found.append(f"{path} takes ({', '.join(parameters)}), not ({', '.join(expected)})")
    return found


def installed_version() -> str:
    try:
        return str(resolve("vllm.__version__"))
    except (ImportError, AttributeError):
        return "unknown"


@functools.cache
def check() -> None:
    """Raise IncompatibleVLLM naming what is missing; once per process."""
    missing = problems()
    if missing:
        raise IncompatibleVLLM(
            f"The installed vLLM ({installed_version()}) lacks APIs this application uses: "
            + "; ".join(missing)
            + f". This release supports vLLM {SUPPORTED_VLLM} (pinned in pyproject.toml): "
            "install that version (`make setup` does), or use a release of this application "
            "made for your vLLM."
        )
