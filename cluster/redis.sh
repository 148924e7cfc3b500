#!/usr/bin/env bash
# Redis for the RunPod job store (JOB_STORE_URL), from Debian's package, no root needed.
#
#   cluster/redis.sh install          put redis-server in .cache/redis (unless one is on PATH)
#   cluster/redis.sh start [port]     start one on this node (the head), its data under
#                                     BASE_PATH/redis; prints the JOB_STORE_URL to deploy with
#   cluster/redis.sh stop [port]
#
# REDIS_BIND (default 127.0.0.1: one node) is the address it listens on; on a cluster, set it
# to the head's private address and REDIS_PASSWORD to a secret, which goes into the URL.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${REDIS_DIR:-$PWD/.cache/redis}"
PORT="${2:-6390}"  # 6379 is Ray's GCS on the head

server() {
  if command -v redis-server >/dev/null; then
    command -v redis-server
  elif [[ -x "$DIR/bin/redis-server" ]]; then
    echo "$DIR/bin/redis-server"
  else
    return 1
  fi
}

install() {
  server >/dev/null && return 0
  local debs
  debs="$(mktemp -d)"
  # redis-tools holds the binary (redis-server is a name for it), with its two libraries
  if ! (cd "$debs" && apt-get download redis-tools liblzf1 libjemalloc2 >/dev/null 2>&1); then
    [[ "$(id -u)" == 0 ]] && apt-get update -qq >/dev/null
    (cd "$debs" && apt-get download redis-tools liblzf1 libjemalloc2 >/dev/null)
  fi
  mkdir -p "$DIR/bin"
  for deb in "$debs"/*.deb; do dpkg-deb -x "$deb" "$DIR/root"; done
  rm -rf "$debs"
  local libs
  libs="$(dirname "$(find "$DIR/root" -name 'liblzf.so.1*' | head -1)")"
  # the name makes the binary a server (Debian's redis-server package is this link); the
  # wrapper gives it the unpacked libraries
  ln -sf redis-check-rdb "$DIR/root/usr/bin/redis-server"
  cat >"$DIR/bin/redis-server" <<EOF
#!/bin/sh
LD_LIBRARY_PATH="$libs\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$DIR/root/usr/bin/redis-server" "\$@"
EOF
  chmod +x "$DIR/bin/redis-server"
  "$DIR/bin/redis-server" --version
}

case "${1:-}" in
  install) install ;;
  start)
    install >/dev/null
    data="${BASE_PATH:-/runpod-volume}/redis"
    [[ -w "$(dirname "$data")" ]] || data="$HOME/.cache/ray-vllm-worker/redis"
    mkdir -p "$data"
    args=(--port "$PORT" --bind "${REDIS_BIND:-127.0.0.1}" --dir "$data"
      --appendonly yes --appendfsync everysec --daemonize yes
      --pidfile "$data/redis-$PORT.pid" --logfile "$data/redis-$PORT.log")
    [[ -n "${REDIS_PASSWORD:-}" ]] && args+=(--requirepass "$REDIS_PASSWORD")
    "$(server)" "${args[@]}"
    auth="${REDIS_PASSWORD:+:$REDIS_PASSWORD@}"
    echo "redis on ${REDIS_BIND:-127.0.0.1}:$PORT (data in $data); deploy with:"
    echo "  export JOB_STORE_URL=redis://${auth:+:<REDIS_PASSWORD>@}${REDIS_BIND:-127.0.0.1}:$PORT/0"
    ;;
  stop)
    data="${BASE_PATH:-/runpod-volume}/redis"
    [[ -f "$data/redis-$PORT.pid" ]] || data="$HOME/.cache/ray-vllm-worker/redis"
    kill "$(cat "$data/redis-$PORT.pid")"
    ;;
  *) sed -n 2,10p "$0" >&2; exit 2 ;;
esac
