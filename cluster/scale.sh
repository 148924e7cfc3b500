#!/usr/bin/env bash
# Change how many replicas each LLM deployment may run, without restarting the ones serving.
#
#   cluster/scale.sh MIN MAX [serve_config.yaml]
#
# Deploys the config with MIN/MAX as every LLM deployment's replica bounds, in its
# `deployments:` section (the rest of the autoscaling as planned). The application's args do
# not change, so Serve applies it in place: running replicas keep serving; only replicas above
# MAX stop, or below MIN start. The bounds hold until the next cluster/deploy.sh; to keep them,
# set MIN_REPLICAS/MAX_REPLICAS in the config's args or the environment.
# shellcheck source=cluster/common.sh
source "$(dirname "$0")/common.sh"

MIN="${1:?usage: cluster/scale.sh MIN MAX [serve_config.yaml]}"
MAX="${2:?usage: cluster/scale.sh MIN MAX [serve_config.yaml]}"
[[ "$MIN" =~ ^[0-9]+$ && "$MAX" =~ ^[0-9]+$ ]] || {
  log "usage: cluster/scale.sh MIN MAX [serve_config.yaml] (whole numbers, got '$MIN' '$MAX')"
  exit 2
}
log "replicas: min $MIN, max $MAX"
REPLICAS="$MIN $MAX" exec "$(dirname "$0")/deploy.sh" "${3:-$SERVE_CONFIG}"
