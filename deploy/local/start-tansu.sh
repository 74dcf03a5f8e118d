#!/usr/bin/env bash
# Starts a Tansu broker (Kafka protocol) for development on 127.0.0.1:${PORT:-9092}, keeping its
# data in ${DATA:-var/tansu} (sqlite) so it survives restarts, and creates the events topics.
# Installs tansu once into ~/.cache/recsys/tansu if it is not on PATH (about 10-25 minutes).
# Stop it with: kill $(cat ${DATA:-var/tansu}/tansu.pid)
set -euo pipefail
PORT="${PORT:-9092}"
DATA="${DATA:-var/tansu}"
PARTITIONS="${PARTITIONS:-8}"

TANSU="$(command -v tansu || true)"
if [ -z "$TANSU" ]; then
    TANSU="$HOME/.cache/recsys/tansu/bin/tansu"
    if [ ! -x "$TANSU" ]; then
        echo "installing tansu into ~/.cache/recsys/tansu" >&2
        CARGO_TARGET_DIR="$HOME/.cache/recsys/tansu-build" \
            cargo install tansu --locked --features dynostore,libsql --root "$HOME/.cache/recsys/tansu"
    fi
fi

mkdir -p "$DATA"
DATA="$(cd "$DATA" && pwd)"
if [ -f "$DATA/tansu.pid" ] && kill -0 "$(cat "$DATA/tansu.pid")" 2>/dev/null; then
    echo "tansu already running (pid $(cat "$DATA/tansu.pid"))"
    exit 0
fi
# Tansu resolves the sqlite path against its working directory.
(cd "$DATA" && nohup "$TANSU" broker \
    --listener-url "tcp://127.0.0.1:$PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$PORT" \
    --storage-engine "sqlite://tansu.db" >"$DATA/tansu.log" 2>&1 &
    echo $! >"$DATA/tansu.pid")
for _ in $(seq 1 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.2
done
echo "tansu listening on 127.0.0.1:$PORT (log $DATA/tansu.log)"
echo "topics are created by: recsys nearline produce --partitions $PARTITIONS ..., or the first worker"
