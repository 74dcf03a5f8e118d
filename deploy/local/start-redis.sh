#!/usr/bin/env bash
# Starts a redis-server for development on 127.0.0.1:${PORT:-6380} (6379 is often the system's),
# in memory only. Use it as the shared store and the cache:
#   RECSYS__STORE__BACKEND=redis RECSYS__STORE__REDIS__URL=redis://127.0.0.1:6380/
#   RECSYS__CACHE__BACKEND=redis RECSYS__CACHE__REDIS__URL=redis://127.0.0.1:6380/
# Stop it with: redis-cli -p ${PORT:-6380} shutdown nosave
set -euo pipefail
PORT="${PORT:-6380}"
command -v redis-server >/dev/null || { echo "redis-server is not installed (apt-get install redis-server)" >&2; exit 1; }
if redis-cli -p "$PORT" ping >/dev/null 2>&1; then
    echo "redis already answering on 127.0.0.1:$PORT"
    exit 0
fi
redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
    --maxmemory-policy noeviction
for _ in $(seq 1 50); do
    redis-cli -p "$PORT" ping >/dev/null 2>&1 && break
    sleep 0.1
done
echo "redis-server listening on 127.0.0.1:$PORT"
