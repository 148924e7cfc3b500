#!/usr/bin/env bash
# Start this node of a RunPod Instant Cluster: the primary node (NODE_RANK=0) becomes the Ray
# head, the others join it. RunPod sets NODE_RANK, PRIMARY_ADDR and NODE_ADDR on every node.
#
#   cluster/start.sh [extra `ray start` arguments]
# shellcheck source=cluster/common.sh
source "$(dirname "$0")/common.sh"

: "${NODE_RANK:?not an Instant Cluster node (NODE_RANK unset): use start-head.sh / start-worker.sh}"
if [[ "$NODE_RANK" == "0" ]]; then
  exec "$(dirname "$0")/start-head.sh" "$@"
fi
: "${PRIMARY_ADDR:?PRIMARY_ADDR unset}"
exec "$(dirname "$0")/start-worker.sh" "$PRIMARY_ADDR:$RAY_PORT" "$@"
