#!/usr/bin/env bash
# Stops what deploy/local/dev-stack.sh, start-tansu.sh and start-redis.sh started: the processes
# whose pids are in ${DEV:-var/dev}/*.pid and ${DATA:-var/tansu}/tansu.pid, and the redis-server on
# 127.0.0.1:${REDIS_PORT:-6380}. Each is asked to stop (SIGTERM), then killed after 10 s.
set -uo pipefail
cd "$(dirname "$0")/../.."
DATA="${DATA:-var/tansu}"
DEV="${DEV:-var/dev}"
REDIS_PORT="${REDIS_PORT:-6380}"
stop() {
    local pidfile="$1" pid
    pid="$(cat "$pidfile" 2>/dev/null)" || return 0
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
        echo "stopped $(basename "$pidfile" .pid) (pid $pid)"
    fi
    rm -f "$pidfile"
}
for pidfile in "$DEV"/*.pid "$DATA/tansu.pid"; do
    [ -e "$pidfile" ] && stop "$pidfile"
done
if command -v redis-cli >/dev/null && redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
    redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1
    echo "stopped redis-server on 127.0.0.1:$REDIS_PORT"
fi
