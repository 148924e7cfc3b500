#!/usr/bin/env bash
# Show the cluster's nodes and resources, and the application's deployments and replicas.
# shellcheck source=cluster/common.sh
source "$(dirname "$0")/common.sh"
"$RAY" status --address "127.0.0.1:$RAY_PORT" || true
"$SERVE" status --address "http://127.0.0.1:$DASHBOARD_PORT"
