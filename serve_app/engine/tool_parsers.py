"""A tool-call parser for the model when TOOL_CALL_PARSER is unset.

vLLM refuses `tool_choice="required"` or a named function unless a tool-call parser is set,
with auto tool choice (400 "requires --tool-call-parser"), although it forces those calls with
structured outputs (the arguments as JSON) whatever the parser. So that tool calls work out of
the box (what LangChain's `bind_tools(tool_choice=...)` and instructor's TOOLS mode send), a
replica picks the parser whose format the model's chat template writes, and otherwise hermes.
An explicit TOOL_CALL_PARSER, or ENABLE_AUTO_TOOL_CHOICE=0, always wins.
"""

from __future__ import annotations

import json
from pathlib import Path

# (what the chat template contains, vLLM's parser for that format), most specific first.
TEMPLATE_MARKERS = (
    ("<function=", "qwen3_coder"),
    ("<tool_call>", "hermes"),
    ("[TOOL_CALLS]", "mistral"),
    ("<|python_tag|>", "llama3_json"),
    ("respond with a JSON for a function call", "llama3_json"),
    ("<\uff5ctool\u2581calls\u2581begin\uff5c>", "deepseek_v3"),  # DeepSeek: full-width bars
    ("<|tool_calls_section_begin|>", "kimi_k2"),
    ("<|tool_call|>", "granite"),
)
# With no known format: hermes parses `<tool_call>{json}</tool_call>`, the format most open chat
# models are tuned on, and forces calls with JSON alone.
FALLBACK = "hermes"


def choose(template: str | None, registered: list[str]) -> tuple[str | None, str]:
    """(parser, why) for a chat template; (None, why) when vLLM has none of the candidates."""
    for marker, parser in TEMPLATE_MARKERS:
        if template and marker in template and parser in registered:
            return parser, f"the chat template writes tool calls with {marker!r}"
    if FALLBACK in registered:
        return FALLBACK, "no known tool-call format in the chat template"
    return None, f"vLLM has no {FALLBACK!r} parser"


def read_chat_template(model_dir: Path, chat_template: str | None) -> str | None:
    """The chat template vLLM will use: CUSTOM_CHAT_TEMPLATE (text or a file), else the
    model's `chat_template.jinja` or its tokenizer config's `chat_template`."""
    if chat_template:
        path = Path(chat_template)
        if len(chat_template) < 4096 and "\n" not in chat_template and path.is_file():
            return path.read_text(errors="replace")
        return chat_template
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(errors="replace")
    config = model_dir / "tokenizer_config.json"
    try:
        template = json.loads(config.read_text()).get("chat_template")
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(template, list):  # named templates: all of them count
        return "\n".join(str(t.get("template", "")) for t in template if isinstance(t, dict))
    return template if isinstance(template, str) else None
