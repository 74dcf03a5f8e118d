#!/usr/bin/env bash
# Starts a Tansu broker (Kafka protocol) for development on 127.0.0.1:${PORT:-9092}, keeping its
# data in ${DATA:-var/tansu} (sqlite) so it survives restarts, and creates the events topics.
# Uses $TANSU, or tansu on PATH, or ~/.cache/recsys/tansu/bin/tansu; without any of them it says
# so and builds tansu there with cargo (10-25 minutes on 2 cores), unless NO_INSTALL=1.
# Stop it with deploy/local/stop.sh (or: kill $(cat ${DATA:-var/tansu}/tansu.pid)).
set -euo pipefail
PORT="${PORT:-9092}"
DATA="${DATA:-var/tansu}"
PARTITIONS="${PARTITIONS:-8}"

TANSU="${TANSU:-$(command -v tansu || true)}"
if [ -z "$TANSU" ]; then
    TANSU="$HOME/.cache/recsys/tansu/bin/tansu"
    if [ ! -x "$TANSU" ]; then
        if [ "${NO_INSTALL:-0}" = 1 ]; then
            echo "tansu is not installed (set TANSU=/path/to/tansu, or run without NO_INSTALL=1 to build it)" >&2
            exit 1
        fi
        cat >&2 <<MSG
tansu (the Kafka-protocol broker) is not installed. Building it now with cargo into
~/.cache/recsys/tansu: this takes 10-25 minutes on a 2-core machine, once. Press Ctrl-C to stop;
set TANSU=/path/to/tansu to use one you have, or point kafka.brokers at a running Kafka.
MSG
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
# Tansu resolves the sqlite path against its working directory. `cd` comes first on its own, so
# the background job (and the pid written) is tansu itself, not a shell around it.
(
    cd "$DATA"
    nohup "$TANSU" broker \
        --listener-url "tcp://127.0.0.1:$PORT" \
        --advertised-listener-url "tcp://127.0.0.1:$PORT" \
        --storage-engine "sqlite://tansu.db" >"$DATA/tansu.log" 2>&1 &
    echo $! >"$DATA/tansu.pid"
)
for _ in $(seq 1 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.2
done
echo "tansu listening on 127.0.0.1:$PORT (log $DATA/tansu.log)"
echo "topics are created by the first worker (kafka.events_partitions) or by recsys nearline produce"
