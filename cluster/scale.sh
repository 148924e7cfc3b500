#!/usr/bin/env bash
# Change how many LLM replicas may run, and redeploy (replicas already serving keep serving).
#
#   cluster/scale.sh MIN MAX [serve_config.yaml]
#
# Writes MIN_REPLICAS/MAX_REPLICAS into the config's application args (a copy next to it,
# <config>.scaled.yaml) and deploys that copy.
# shellcheck source=cluster/common.sh
source "$(dirname "$0")/common.sh"

MIN="${1:?usage: cluster/scale.sh MIN MAX [serve_config.yaml]}"
MAX="${2:?usage: cluster/scale.sh MIN MAX [serve_config.yaml]}"
CONFIG="${3:-$SERVE_CONFIG}"
SCALED="${CONFIG%.yaml}.scaled.yaml"
"$PYTHON" - "$CONFIG" "$SCALED" "$MIN" "$MAX" <<'PY'
import sys, yaml
source, target, low, high = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
config = yaml.safe_load(open(source))
for app in config["applications"]:
    if str(app.get("import_path", "")).startswith("serve_app.app:"):
        app["args"] = {**(app.get("args") or {}), "MIN_REPLICAS": low, "MAX_REPLICAS": high}
yaml.safe_dump(config, open(target, "w"), sort_keys=False)
PY
log "replicas: min $MIN, max $MAX"
exec "$(dirname "$0")/deploy.sh" "$SCALED"
