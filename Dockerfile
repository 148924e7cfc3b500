# syntax=docker/dockerfile:1.7
# GPU image: vLLM 0.32.0's official image (CUDA, PyTorch, vLLM) + Ray Serve + this project.
#
#   docker build -t you/ray-vllm-worker .
#   docker build -t you/ray-vllm-worker:qwen --build-arg MODEL_NAME=Qwen/Qwen2.5-7B-Instruct .
#   DOCKER_BUILDKIT=1 docker build --secret id=HF_TOKEN \
#       --build-arg MODEL_NAME=meta-llama/Llama-3.1-8B-Instruct -t you/ray-vllm-worker:llama .
#
# Runs `serve run serve_config.yaml` by default; RUN_MODE selects a Ray head or worker node
# or the classic RunPod serverless worker (see serve_app/tooling/container.py and docs/deploy.md).
ARG VLLM_IMAGE=vllm/vllm-openai:v0.32.0
FROM ${VLLM_IMAGE}

# Build arguments of worker-vllm's "Option 2": bake a model into the image.
ARG MODEL_NAME=""
ARG MODEL_REVISION=""
ARG BASE_PATH="/runpod-volume"
ARG QUANTIZATION=""
# (DL3064 reads "TOKEN" in TOKENIZER_*: these name a tokenizer, not a credential.)
# hadolint ignore=DL3064
ARG TOKENIZER_NAME=""
# hadolint ignore=DL3064
ARG TOKENIZER_REVISION=""

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    BASE_PATH=${BASE_PATH} \
    BAKED_MODELS_DIR=/models/baked \
    RUN_MODE=serve

WORKDIR /app
COPY pyproject.toml README.md serve_config.yaml ./
COPY configs ./configs
COPY serve_app ./serve_app
COPY cluster ./cluster
# The base image already holds vllm==0.32.0 and its torch: the `gpu` extra only confirms them.
RUN python3 -m pip install -e ".[gpu]"

# A gated model's token is a BuildKit secret: read for this step only, never in a layer.
RUN --mount=type=secret,id=HF_TOKEN,required=false \
    if [ -n "${MODEL_NAME}" ]; then \
      HF_TOKEN="$(cat /run/secrets/HF_TOKEN 2>/dev/null || true)" \
      MODEL_NAME="${MODEL_NAME}" MODEL_REVISION="${MODEL_REVISION}" \
      TOKENIZER_NAME="${TOKENIZER_NAME}" TOKENIZER_REVISION="${TOKENIZER_REVISION}" \
      python3 -m serve_app.tooling.bake /models/baked; \
    fi

# The baked model (if any) is the default model; everything else stays configurable at run time.
# hadolint ignore=DL3064
ENV MODEL_NAME=${MODEL_NAME} \
    MODEL_REVISION=${MODEL_REVISION} \
    QUANTIZATION=${QUANTIZATION} \
    TOKENIZER_NAME=${TOKENIZER_NAME} \
    TOKENIZER_REVISION=${TOKENIZER_REVISION}

# 8000: the OpenAI/RunPod HTTP endpoint. Ray's ports are opened per cluster (cluster/README.md).
EXPOSE 8000
ENTRYPOINT ["python3", "-m", "serve_app.tooling.container"]
