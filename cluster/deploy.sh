#!/usr/bin/env bash
# Deploy (or update) the application on the running cluster, and wait until it serves.
#
#   cluster/deploy.sh [serve_config.yaml]
#
# Validates the configuration first (one message listing every bad setting, or why no node of
# the cluster can hold a replica: exit code 2, nothing deployed), then `serve deploy`s it
# through the head's dashboard and follows `serve status` until the application is RUNNING
# (exit 0) or DEPLOY_FAILED (exit 1, with Serve's message).
# shellcheck source=cluster/common.sh
source "$(dirname "$0")/common.sh"

CONFIG="${1:-$SERVE_CONFIG}"
ADDRESS="http://127.0.0.1:$DASHBOARD_PORT"
# The dashboard (Serve's REST API) may still be starting right after start-head.sh.
if ! "$PYTHON" - "$ADDRESS" "${DASHBOARD_WAIT_S:-60}" <<'PY'
import sys, time, urllib.error, urllib.request
address, deadline = sys.argv[1], time.monotonic() + float(sys.argv[2])
while True:
    try:
        urllib.request.urlopen(address + "/api/version", timeout=5).close()
        break
    except urllib.error.HTTPError:  # it answers (401 without the cluster's token is fine)
        break
    except Exception as exc:  # refused, reset, timeout
        if time.monotonic() > deadline:
            sys.exit(f"{exc}")
        time.sleep(1)
PY
then
  log "no Ray dashboard answers at $ADDRESS: is the head running (cluster/status.sh), and is"
  log "DASHBOARD_PORT the port it was started with? Its log: /tmp/ray/session_latest/logs/dashboard.log"
  exit 1
fi
# Validated (every bad setting listed, and a replica no node of the cluster can hold: exit 2,
# nothing deployed), with HOST/PORT applied and each LLM deployment's replica scaling written
# out: REPLICAS="MIN MAX" (cluster/scale.sh) sets its bounds.
SCALING=(--scaling)
if [[ -n "${REPLICAS:-}" ]]; then read -r -a bounds <<<"$REPLICAS"; SCALING+=(--replicas "${bounds[@]}"); fi
LAUNCH_CONFIG="$("$PYTHON" -m serve_app launch-config "$CONFIG" "${SCALING[@]}" --check-on "127.0.0.1:$RAY_PORT")"
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
  sleep 2
done
log "not RUNNING after ${DEPLOY_TIMEOUT_S}s; see cluster/status.sh"
exit 1
