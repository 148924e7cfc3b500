"""Deployment artifacts: the Dockerfile (linted; Docker cannot build here), the build-time model
bake and its run-time lookup, the container entry point, and RunPod's generated forms."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from serve_app.config.schema import load_schema
from serve_app.engine.model_files import baked_path, resolve_model
from serve_app.tooling import container, runpod_config
from serve_app.tooling.bake import bake

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def test_dockerfile_passes_hadolint():
    result = subprocess.run(
        [str(Path(sys.executable).with_name("hadolint")), str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_has_worker_vllm_build_args_and_keeps_the_token_out_of_layers():
    for arg in ("MODEL_NAME", "MODEL_REVISION", "BASE_PATH", "QUANTIZATION", "TOKENIZER_NAME",
                "TOKENIZER_REVISION"):  # fmt: skip
        assert re.search(rf"^ARG {arg}=", DOCKERFILE, re.M), arg
    assert "--mount=type=secret,id=HF_TOKEN" in DOCKERFILE
    assert not re.search(r"^(ARG|ENV)\s+HF_TOKEN", DOCKERFILE, re.M)
    assert "FROM ${VLLM_IMAGE}" in DOCKERFILE and "vllm/vllm-openai:v0.32.0" in DOCKERFILE
    baked_default = load_schema().by_name["BAKED_MODELS_DIR"].default
    assert f"BAKED_MODELS_DIR={baked_default}" in DOCKERFILE
    assert f"python3 -m serve_app.tooling.bake {baked_default}" in DOCKERFILE


def test_dockerfile_entry_point_is_the_container_module():
    (entry,) = re.findall(r"^ENTRYPOINT (.+)$", DOCKERFILE, re.M)
    assert json.loads(entry) == ["python3", "-m", "serve_app.tooling.container"]
    assert re.search(r"^\s+RUN_MODE=serve$", DOCKERFILE, re.M)


def shown(step: list[str]) -> list[str]:
    """A command line with the interpreter as `python` and paths as their file names."""
    return ["python" if part == sys.executable else Path(part).name for part in step]


@pytest.mark.parametrize(
    ("env", "expected", "stays_up"),
    [
        ({}, [["python", "-m", "serve_app", "serve", "serve_config.yaml"]], False),
        ({"RUN_MODE": "serverless"}, [["python", "-m", "serve_app.runpod_worker"]], False),
        ({"RUN_MODE": "head"}, [["start-head.sh"], ["deploy.sh", "serve_config.yaml"]], True),
        ({"RUN_MODE": "worker", "RAY_HEAD_ADDRESS": "10.0.0.1:6379"},
         [["start-worker.sh", "10.0.0.1:6379"]], True),
        ({"RUN_MODE": "instant-cluster", "NODE_RANK": "0"},
         [["start-head.sh"], ["deploy.sh", "serve_config.yaml"]], True),
        ({"RUN_MODE": "instant-cluster", "NODE_RANK": "2", "PRIMARY_ADDR": "10.65.0.2"},
         [["start-worker.sh", "10.65.0.2:6379"]], True),
    ],
)  # fmt: skip
def test_container_entry_point_command_lines(env, expected, stays_up):
    steps, stay_up = container.commands(env)
    assert stay_up == stays_up
    assert [shown(step) for step in steps] == expected
    assert all(Path(step[0]).exists() for step in steps)  # the scripts and python are there


def test_container_entry_point_refuses_unknown_modes():
    result = subprocess.run(
        [sys.executable, "-m", "serve_app.tooling.container"],
        env={"RUN_MODE": "bogus", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert "RUN_MODE='bogus': expected one of serve, serverless, head, worker" in result.stderr
    with pytest.raises(ValueError, match="RAY_HEAD_ADDRESS"):
        container.commands({"RUN_MODE": "worker"})


def test_bake_copies_the_model_and_run_time_finds_it_offline(tiny_model, tmp_path):
    source = tmp_path / "build-context" / "my-model"
    shutil.copytree(tiny_model, source)
    baked_dir = tmp_path / "models" / "baked"
    manifest = bake({"MODEL_NAME": str(source), "HF_TOKEN": "hf_secret"}, baked_dir)
    shutil.rmtree(source)  # the build context is gone at run time

    baked = baked_path(str(baked_dir), str(source), None)
    assert baked is not None and (baked / "config.json").exists()
    assert "hf_secret" not in (baked_dir / "baked.json").read_text()
    assert manifest["models"][str(source)]["path"] == baked.name

    # A volume mounted at BASE_PATH (empty here) cannot hide it; no network is tried.
    volume = tmp_path / "runpod-volume"
    volume.mkdir()
    found = resolve_model(
        str(source), revision=None, base_path=str(volume), hf_cache=str(volume / "hf"),
        baked_dir=str(baked_dir),
    )  # fmt: skip
    assert found == baked
    assert baked_path(str(baked_dir), str(source), "other-revision") is None
    assert baked_path(str(baked_dir), "org/other-model", None) is None


def test_runpod_forms_are_generated_from_the_schema():
    assert runpod_config.stale() == [], "run `python -m serve_app runpod-config --write`"
    worker = json.loads((ROOT / "worker-config.json").read_text())
    fields = worker["schema"]
    assert fields["MODEL_NAME"]["required"] is True
    assert fields["RUN_MODE"]["value"] == "serverless"
    assert fields["MAX_MODEL_LEN"]["type"] == "number"
    assert fields["ENABLE_LORA"]["type"] == "toggle"
    assert {o["value"] for o in fields["DTYPE"]["options"]} >= {"auto", "float16", "bfloat16"}
    assert "SWAP_SPACE" not in fields  # ignored by vLLM 0.32: not offered
    assert "MAX_REPLICAS" not in fields  # a Ray Serve setting: not for serverless workers
    (version,) = worker["versions"].values()
    listed = [name for category in version["categories"] for name in category["settings"]]
    assert sorted(listed) == sorted(fields)
    hub = json.loads((ROOT / ".runpod" / "hub.json").read_text())
    assert hub["type"] == "serverless"
    assert [e["key"] for e in hub["config"]["env"]] == list(fields)
