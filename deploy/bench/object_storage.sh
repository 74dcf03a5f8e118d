#!/usr/bin/env bash
# Train + publish to an S3-protocol server against train + publish to a local directory, same
# input, same settings, alternating rounds; prints each round, the fastest of each and the ratio.
#
#   deploy/bench/object_storage.sh [EVENTS] [ROUNDS]      # defaults: 5000000 events, 2 rounds
#
# Needs the release binary (cargo build --release) and s3s-fs (.ci/run installs it into
# ~/.cache/recsys/s3s-fs). The S3 server keeps its objects on the same disk as the local model
# root, so the ratio is the cost of the protocol (HTTP, signing, multipart, ETag checks), not of a
# network.
set -euo pipefail
cd "$(dirname "$0")/../.."

EVENTS="${1:-5000000}"
ROUNDS="${2:-2}"
TARGET="${CARGO_TARGET_DIR:-$HOME/.cache/recsys/target}"
RECSYS="${RECSYS:-$TARGET/release/recsys}"
S3S="${RECSYS_S3S_FS:-$HOME/.cache/recsys/s3s-fs/bin/s3s-fs}"
[ -x "$RECSYS" ] || { echo "build the release binary first: cargo build --release" >&2; exit 1; }
[ -x "$S3S" ] || { echo "s3s-fs not found at $S3S (.ci/run installs it)" >&2; exit 1; }

work="$(mktemp -d)"
cleanup() { [ -n "${s3_pid:-}" ] && kill "$s3_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
mkdir -p "$work/s3/bench"
secret="$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
"$S3S" --host 127.0.0.1 --port "$port" --access-key bench --secret-key "$secret" "$work/s3" \
    >"$work/s3.log" 2>&1 &
s3_pid=$!
export AWS_ENDPOINT_URL="http://127.0.0.1:$port" AWS_ACCESS_KEY_ID=bench \
    AWS_SECRET_ACCESS_KEY="$secret" AWS_REGION=us-east-1 AWS_ALLOW_HTTP=true
export RECSYS_LOG=warn

users=$((EVENTS / 50)); items=$((EVENTS / 200 > 1000 ? EVENTS / 200 : 1000))
echo "synthetic data: $EVENTS events, $users members, $items items" >&2
"$RECSYS" offline synth --users "$users" --items "$items" --interactions "$EVENTS" --seed 42 \
    --output "$work/data" >/dev/null

train() {  # $1 = model root; prints wall seconds
    local start end
    start=$(date +%s.%N)
    "$RECSYS" offline train --interactions "$work/data/interactions.parquet" \
        --items "$work/data/items.parquet" --model-root "$1" --skip-eval --force \
        --iterations 5 >/dev/null
    end=$(date +%s.%N)
    python3 -c "print(f'{$end - $start:.2f}')"
}

best_local=""; best_s3=""
for round in $(seq 1 "$ROUNDS"); do
    l=$(train "$work/local-models")
    s=$(train "s3://bench/models")
    echo "round $round: local directory ${l}s, S3 server ${s}s"
    best_local=$(python3 -c "print(min(float('$l'), float('${best_local:-$l}')))")
    best_s3=$(python3 -c "print(min(float('$s'), float('${best_s3:-$s}')))")
done
size=$(du -sb "$work/local-models" | cut -f1)
python3 - "$best_local" "$best_s3" "$size" "$ROUNDS" <<'EOF'
import sys
local, s3, size, rounds = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
print(f"train + publish, fastest of {rounds}: local directory {local:.2f} s, S3 server {s3:.2f} s, "
      f"ratio {s3 / local:.3f} (target <= 1.10); model root on disk {size / 2**20:.0f} MiB")
EOF
