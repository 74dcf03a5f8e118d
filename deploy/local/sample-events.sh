#!/usr/bin/env bash
# Writes ${1:-60} sample events as JSON lines on stdout, stamped now, for the members and items
# `recsys offline synth` makes (u0000000…, i000000…): member u0000007 plays ten titles, the rest
# are spread over the first 100 members. Send them with:
#   deploy/local/sample-events.sh > var/dev/events.jsonl
#   recsys nearline produce --input var/dev/events.jsonl
set -euo pipefail
N="${1:-60}"
ITEMS="${ITEMS:-1000}"
now=$(($(date +%s) * 1000))
for i in $(seq 0 $((N - 1))); do
    if [ "$i" -lt 10 ]; then member=7; else member=$((i * 37 % 100)); fi
    printf '{"user_id":"u%07d","item_id":"i%06d","event_type":"play","ts":%d}\n' \
        "$member" $(((i * 131 + 17) % ITEMS)) $((now - (N - i) * 1000))
done
