# shellcheck shell=bash disable=SC2034  # (variables are used by the scripts that source this)
# Shared settings of the cluster scripts (sourced, not run).
# Every value can be overridden from the environment.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -x "$REPO_ROOT/.venv/bin/ray" ]]; then BIN="$REPO_ROOT/.venv/bin/"; else BIN=""; fi
RAY="${BIN}ray"
SERVE="${BIN}serve"
PYTHON="${PYTHON:-${BIN}python}"
[[ -x "$PYTHON" || -n "$(command -v "$PYTHON" 2>/dev/null)" ]] || PYTHON=python3

RAY_PORT="${RAY_PORT:-6379}"                  # GCS: workers join the head here
DASHBOARD_PORT="${DASHBOARD_PORT:-8265}"      # dashboard and the Serve REST API (`serve deploy`)
# The dashboard (which can run code) listens on localhost only unless you ask otherwise.
DASHBOARD_HOST="${DASHBOARD_HOST:-127.0.0.1}"
SERVE_CONFIG="${SERVE_CONFIG:-$REPO_ROOT/serve_config.yaml}"
DEPLOY_TIMEOUT_S="${DEPLOY_TIMEOUT_S:-1800}"  # model download + engine start can be slow

# Ray's own settings this project chooses (e.g. RAY_SERVE_ENABLE_HA_PROXY=1: Serve's HAProxy
# ingress), from configs/env_vars.yaml; values already in the environment win.
eval "$(cd "$REPO_ROOT" && "$PYTHON" -m serve_app ray-env)"

# Ray's token authentication stays on: every node and client needs the cluster's token,
# in ~/.ray/auth_token or RAY_AUTH_TOKEN.
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"

# Ports the nodes of a multi-machine cluster use to reach each other; fixed so that a
# firewall (or RunPod's port list) can open them. See cluster/README.md.
NODE_PORT_ARGS=(
  --node-manager-port "${NODE_MANAGER_PORT:-6380}"
  --object-manager-port "${OBJECT_MANAGER_PORT:-6381}"
  --runtime-env-agent-port "${RUNTIME_ENV_AGENT_PORT:-6382}"
  --dashboard-agent-grpc-port "${DASHBOARD_AGENT_GRPC_PORT:-6383}"
  --dashboard-agent-listen-port "${DASHBOARD_AGENT_LISTEN_PORT:-6384}"
  --metrics-export-port "${METRICS_EXPORT_PORT:-6385}"
  --min-worker-port "${MIN_WORKER_PORT:-10002}"
  --max-worker-port "${MAX_WORKER_PORT:-10999}"
)

log() { echo "[cluster] $*" >&2; }
