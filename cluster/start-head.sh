#!/usr/bin/env bash
# Start the Ray head node of a cluster (run on the first machine or pod).
#
#   cluster/start-head.sh [extra `ray start` arguments, e.g. --num-gpus 8]
#
# The environment of this command (MODEL_NAME, HF_TOKEN, ...) is what the application reads
# when it is deployed: export the settings first, or put them under `args` in the config.
# shellcheck source=cluster/common.sh
source "$(dirname "$0")/common.sh"

NODE_IP_ARGS=()
[[ -n "${NODE_ADDR:-}" ]] && NODE_IP_ARGS=(--node-ip-address "$NODE_ADDR")

"$RAY" get-auth-token --generate >/dev/null
# --include-dashboard true: the dashboard carries `serve deploy`; when it cannot start (its port
# is taken, ...) `ray start` fails here with the dashboard's own log, not later at deploy time.
log "starting the head on port $RAY_PORT (dashboard $DASHBOARD_HOST:$DASHBOARD_PORT)"
"$RAY" start --head \
  --port "$RAY_PORT" \
  --dashboard-host "$DASHBOARD_HOST" --dashboard-port "$DASHBOARD_PORT" \
  --include-dashboard true \
  --disable-usage-stats \
  "${NODE_IP_ARGS[@]}" "${NODE_PORT_ARGS[@]}" "$@"

HEAD_IP="${NODE_ADDR:-$(hostname -I 2>/dev/null | awk '{print $1}')}"
log "head is up. On each worker node, with this cluster's token:"
log "  export RAY_AUTH_TOKEN=<the contents of ~/.ray/auth_token on this node>"
log "  cluster/start-worker.sh ${HEAD_IP:-<head ip>}:$RAY_PORT"
log "then deploy: cluster/deploy.sh [serve_config.yaml]"
