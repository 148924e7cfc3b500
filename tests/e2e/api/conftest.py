"""One app for the API modules of this package (RunPod's job API, then every route `vllm
serve` answers): the tiny model as its own HTTP ingress with an API key, two generation slots
and no HTTP queue (so overload is easy to reach), six queued jobs, a fixed endpoint id and
vLLM's Responses store. Deployed once for the package (an engine start is most of a module's
set-up) and deleted after its last test."""

from __future__ import annotations

from pathlib import Path

import pytest

API_KEY = "test-key-123"
ENDPOINT = "test-endpoint"
MAX_REQUEST_BYTES = 65536


@pytest.fixture(scope="package")
def app(serve_cluster, tiny_model: Path, tmp_path_factory):
    env = {
        "MODEL_NAME": str(tiny_model),
        "OPENAI_SERVED_MODEL_NAME_OVERRIDE": "tiny",
        "BASE_PATH": str(tmp_path_factory.mktemp("base")),
        "DISABLE_LOG_STATS": "1",
        "API_KEY": API_KEY,
        "RUNPOD_ENDPOINT_ID": ENDPOINT,
        "MAX_CONCURRENCY": "2",
        "MAX_QUEUED_REQUESTS": "0",
        "MAX_QUEUED_JOBS": "6",
        "MAX_REQUEST_BYTES": str(MAX_REQUEST_BYTES),
        "VLLM_ENABLE_RESPONSES_API_STORE": "1",
        # TOOL_CALL_PARSER unset: the replica chooses one (forced tool calls work by default)
        "STRUCTURED_OUTPUTS_CONFIG": '{"disable_any_whitespace": true}',
        "GUIDED_DECODING_BACKEND": "xgrammar",
    }
    with serve_cluster.deployed(env) as app:
        yield app
