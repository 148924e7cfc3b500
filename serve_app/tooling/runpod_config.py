"""RunPod's deployment forms, generated from the env-var schema (configs/env_vars.yaml):

* `worker-config.json` — the form RunPod's console shows for a serverless endpoint
  (format: worker-vllm README, "Worker Config"),
* `.runpod/hub.json` — the RunPod Hub listing.

Both configure the image as a classic serverless worker (RUN_MODE=serverless). Variables that
vLLM 0.32 ignores and aliases are left out of the forms; `python -m serve_app runpod-config
--write` regenerates both, and a test fails when the committed files differ.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from serve_app.config.schema import EnvVar, load_schema

ROOT = Path(__file__).resolve().parents[2]
WORKER_CONFIG = ROOT / "worker-config.json"
HUB_CONFIG = ROOT / ".runpod" / "hub.json"
_ACRONYMS = {"LORA": "LoRA", "LORAS": "LoRAs", "GPU": "GPU", "KV": "KV", "HF": "HF", "API": "API",
             "ID": "ID", "OPENAI": "OpenAI", "RAY": "Ray", "CPU": "CPU", "DIR": "Dir", "S": "(s)",
             "TTL": "TTL", "RUNSYNC": "Runsync", "NGRAM": "N-gram", "ROPE": "RoPE"}  # fmt: skip
# In the serverless forms the image must run as a serverless worker.
SERVERLESS_DEFAULTS = {"RUN_MODE": "serverless"}


def _project() -> dict[str, Any]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["ray-vllm-worker"]


def title(name: str) -> str:
    return " ".join(_ACRONYMS.get(word, word.capitalize()) for word in name.split("_"))


def form_variables() -> list[EnvVar]:
    return [
        v
        for v in load_schema().variables
        if v.serverless and not v.target.ignored and not v.target.alias
    ]


def _default(var: EnvVar) -> Any:
    value = SERVERLESS_DEFAULTS.get(var.name, var.default)
    if var.type == "json" and value is not None:
        return json.dumps(value)
    return value


def _form_type(var: EnvVar) -> str:
    if var.choices:
        return "select"
    return {"bool": "toggle", "int": "number", "float": "number"}.get(var.type, "text")


def worker_config() -> dict[str, Any]:
    schema = load_schema()
    fields: dict[str, Any] = {}
    for var in form_variables():
        default = _default(var)
        field: dict[str, Any] = {
            "env_var_name": var.name,
            "value": "" if default is None else default,
            "title": title(var.name),
            "description": " ".join(var.description.split()),
            "required": var.name == "MODEL_NAME",
            "type": _form_type(var),
        }
        if var.choices:
            field["options"] = [{"value": c, "label": str(c)} for c in var.choices]
        fields[var.name] = field
    names = set(fields)
    categories = [
        {
            "title": c.title,
            "settings": [v.name for v in schema.in_category(c.id) if v.name in names],
        }
        for c in schema.categories
    ]
    project = _project()
    version = {
        "imageName": project["image"],
        "minimumCudaVersion": project["minimum-cuda"],
        "categories": [c for c in categories if c["settings"]],
    }
    return {"versions": {"0.32.0": version}, "schema": fields}


def hub_config() -> dict[str, Any]:
    env = []
    for var in form_variables():
        default = _default(var)
        kind = {"bool": "boolean", "int": "number", "float": "number"}.get(var.type, "string")
        entry: dict[str, Any] = {
            "name": title(var.name),
            "type": kind,
            "description": " ".join(var.description.split()),
        }
        if default is not None:
            entry["default"] = default
        if var.choices:
            entry["options"] = [{"label": str(c), "value": c} for c in var.choices]
        env.append({"key": var.name, "input": entry})
    return {
        "title": "vLLM on Ray Serve",
        "description": "OpenAI- and RunPod-compatible LLM endpoints on vLLM, configured like "
        "worker-vllm; the same image scales out on Ray Serve.",
        "type": "serverless",
        "category": "language",
        "config": {
            "runsOn": "GPU",
            "containerDiskInGb": 100,
            "presets": [
                {
                    "name": "HuggingFaceTB/SmolLM2-135M-Instruct",
                    "defaults": {"MODEL_NAME": "HuggingFaceTB/SmolLM2-135M-Instruct"},
                }
            ],
            "env": env,
        },
    }


def rendered() -> dict[Path, str]:
    return {
        WORKER_CONFIG: json.dumps(worker_config(), indent=2) + "\n",
        HUB_CONFIG: json.dumps(hub_config(), indent=2) + "\n",
    }


def write() -> list[Path]:
    changed = []
    for path, text in rendered().items():
        if not path.exists() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            changed.append(path)
    return changed


def stale() -> list[Path]:
    return [p for p, text in rendered().items() if not p.exists() or p.read_text() != text]
