"""One app for the modules of this package: several models behind the router ingress (two
ingress replicas), of two kinds — tiny-a (a chat model, two LLM replicas), tiny-b (two
tensor-parallel CPU workers, scaled to zero) and tiny-embed (vLLM's pooling runner) — with two
job queue replicas on a real Redis and two generation slots per replica (so a burst of jobs
waits in the job queues). Deployed once for the package (engine starts are most of a module's
set-up) and deleted after its last test."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="package")
def app(
    serve_cluster,
    tiny_model: Path,
    tiny_tp_model: Path,
    tiny_embedding_model: Path,
    tmp_path_factory,
    redis_url,
):
    env = {
        "BASE_PATH": str(tmp_path_factory.mktemp("base")),
        "DISABLE_LOG_STATS": "1",
        "INGRESS_REPLICAS": "2",
        "JOB_STORE_URL": redis_url,
        "JOB_QUEUE_REPLICAS": "2",
        "MAX_CONCURRENCY": "2",  # a burst of jobs waits in the job queues
    }
    args = {
        "models": [
            {
                "MODEL_NAME": str(tiny_model),
                "OPENAI_SERVED_MODEL_NAME_OVERRIDE": "tiny-a",
                "MIN_REPLICAS": 2,  # jobs spread over several LLM replicas too
                "MAX_REPLICAS": 2,
            },
            {
                "MODEL_NAME": str(tiny_tp_model),
                "OPENAI_SERVED_MODEL_NAME_OVERRIDE": "tiny-b",
                "MIN_REPLICAS": 0,
                "MAX_REPLICAS": 1,
                "DOWNSCALE_DELAY_S": 5,
            },
            {
                "MODEL_NAME": str(tiny_embedding_model),
                "OPENAI_SERVED_MODEL_NAME_OVERRIDE": "tiny-embed",
            },
        ]
    }
    with serve_cluster.deployed(env, args) as app:
        yield app
