#!/usr/bin/env bash
# Deploy (or update) the application on the running cluster, and wait until it serves.
#
#   cluster/deploy.sh [serve_config.yaml]
#
# Validates the configuration first (one message listing every bad setting, exit code 2),
# then `serve deploy`s it through the head's dashboard and follows `serve status` until the
# application is RUNNING (exit 0) or DEPLOY_FAILED (exit 1, with Serve's message).
# shellcheck source=cluster/common.sh
source "$(dirname "$0")/common.sh"

CONFIG="${1:-$SERVE_CONFIG}"
ADDRESS="http://127.0.0.1:$DASHBOARD_PORT"
"$PYTHON" -m serve_app plan "$CONFIG" >/dev/null
LAUNCH_CONFIG="$("$PYTHON" -m serve_app launch-config "$CONFIG")"  # HOST/PORT applied
log "deploying $CONFIG to $ADDRESS"
"$SERVE" deploy "$LAUNCH_CONFIG" --address "$ADDRESS"

deadline=$((SECONDS + DEPLOY_TIMEOUT_S))
while ((SECONDS < deadline)); do
  state="$("$SERVE" status --address "$ADDRESS" 2>/dev/null | "$PYTHON" -c '
import sys, yaml
apps = (yaml.safe_load(sys.stdin) or {}).get("applications") or {}
states = {a.get("status") for a in apps.values()}
if "DEPLOY_FAILED" in states:
    print("FAILED")
    for name, a in apps.items():
        print(name + ": " + str(a.get("message") or ""), file=sys.stderr)
elif apps and states == {"RUNNING"}:
    print("RUNNING")
else:
    print("WAITING")
' || echo WAITING)"
  case "$state" in
    RUNNING) log "application is RUNNING"; exit 0 ;;
    FAILED) log "deploy failed (Serve's message above)"; exit 1 ;;
  esac
  sleep 5
done
log "not RUNNING after ${DEPLOY_TIMEOUT_S}s; see cluster/status.sh"
exit 1
