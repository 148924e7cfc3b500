#!/usr/bin/env bash
# Join a Ray cluster as a worker node (run on every other machine or pod).
#
#   cluster/start-worker.sh HEAD_IP:PORT [extra `ray start` arguments]
#
# Needs the cluster's token: RAY_AUTH_TOKEN, or ~/.ray/auth_token copied from the head.
# shellcheck source=cluster/common.sh
source "$(dirname "$0")/common.sh"

HEAD="${1:?usage: cluster/start-worker.sh HEAD_IP:PORT [ray start arguments]}"
shift
NODE_IP_ARGS=()
[[ -n "${NODE_ADDR:-}" ]] && NODE_IP_ARGS=(--node-ip-address "$NODE_ADDR")

log "joining the cluster at $HEAD"
"$RAY" start --address "$HEAD" --disable-usage-stats \
  "${NODE_IP_ARGS[@]}" "${NODE_PORT_ARGS[@]}" "$@"
