#!/usr/bin/env bash
# Runs the hot-path benchmarks of two recsys binaries alternately on this machine, so a change can
# be judged against the commit before it in one run: training (iALS, the synthetic matrix), the
# whole-catalog scoring kernel (10k and 100k items), the feature jobs (5 M events) and the
# nearline workers. Peers are skipped: the other binary is the reference. Each result's JSON
# line goes to OUT/<bench>.<label>.<round>.json, the whole output beside it (.log).
#
#   deploy/bench/compare-binaries.sh BEFORE_BIN AFTER_BIN [ROUNDS] [OUT]
#
# The nearline bench needs Tansu (RECSYS_TANSU, or ~/.cache/recsys/tansu/bin/tansu) and
# redis-server on PATH.
set -euo pipefail
before=${1:?usage: compare-binaries.sh BEFORE_BIN AFTER_BIN [ROUNDS] [OUT]}
after=${2:?usage: compare-binaries.sh BEFORE_BIN AFTER_BIN [ROUNDS] [OUT]}
rounds=${3:-2}
out=${4:-var/compare}
mkdir -p "$out"
root=$(cd "$(dirname "$0")/../.." && pwd)
export RECSYS_TANSU=${RECSYS_TANSU:-$HOME/.cache/recsys/tansu/bin/tansu}
export RECSYS_LOG=${RECSYS_LOG:-warn}

declare -A benches=(
    [training]="offline bench --skip-peer --rounds 2 --movielens $root/../shared/data/ml-latest-small"
    [kernel]="online bench --skip-server --skip-peer --rounds 3"
    [features]="offline bench --features --feature-events 5000000 --skip-peer --rounds 2"
    [nearline]="nearline bench --skip-freshness"
)
for round in $(seq 1 "$rounds"); do
    for bench in training kernel features nearline; do
        # Alternate which binary goes first, so neither always runs on a warmer machine.
        if (( round % 2 )); then order="before after"; else order="after before"; fi
        for label in $order; do
            bin=$before
            [ "$label" = after ] && bin=$after
            echo "round $round: $bench, $label ($bin)" >&2
            # shellcheck disable=SC2086
            "$bin" ${benches[$bench]} > "$out/$bench.$label.$round.log" 2>&1 || {
                echo "  failed: see $out/$bench.$label.$round.log" >&2
                continue
            }
            tail -n 1 "$out/$bench.$label.$round.log" > "$out/$bench.$label.$round.json"
        done
    done
done
echo "results in $out" >&2
