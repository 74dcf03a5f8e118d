#!/usr/bin/env bash
# The three tiers as separate processes on one machine, against local Tansu and Redis: train on
# synthetic data, load the store, then start the online server and one nearline worker. Each
# process logs to var/dev/*.log; stop everything with deploy/local/stop.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
RECSYS="${RECSYS:-target/release/recsys}"
[ -x "$RECSYS" ] || cargo build --release
deploy/local/start-redis.sh
deploy/local/start-tansu.sh
mkdir -p var/dev
export RECSYS_CONFIG=deploy/local/recsys.toml
"$RECSYS" offline synth --users 5000 --items 1000 --interactions 200000 --output var/dev/data
"$RECSYS" offline train --interactions var/dev/data/interactions.parquet --items var/dev/data/items.parquet
"$RECSYS" offline load-store
nohup "$RECSYS" online serve >var/dev/online.log 2>&1 & echo $! >var/dev/online.pid
nohup "$RECSYS" nearline run >var/dev/nearline.log 2>&1 & echo $! >var/dev/nearline.pid
echo "online gRPC on 127.0.0.1:50051 (metrics :9464), nearline worker (metrics :9465)"
deploy/local/sample-events.sh 60 >var/dev/events.jsonl
echo "send events: $RECSYS nearline produce --input var/dev/events.jsonl"
echo "stop everything: deploy/local/stop.sh"
