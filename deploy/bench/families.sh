#!/usr/bin/env bash
# Every model family on a benchmark's own split, scored with the published protocol, with the
# NumPy EASE beside recsys's at the same λ; one JSON line per run, then a table.
#
# Usage: deploy/bench/families.sh [SPLIT_DIR] [OUT]
#   SPLIT_DIR holds train.csv and test.csv (user_id,item_id); default ../shared/data/gowalla.
#   RECSYS (default target/release/recsys), FAMILIES (default "ials item-knn ease bspm"),
#   LAMBDA (EASE's λ, default the configured one),
#   PEER=0 skips the NumPy EASE, PEER_TOP_N (its pruning: 0 = dense B, as the papers score it;
#   recsys's top_n to compare at the pruning recsys serves), PEER_METHOD (inv and/or cholesky, e.g.
#   "inv cholesky"; default cholesky: `inv`, Steck's code, holds four n×n matrices, more than this
#   machine's memory at 41k items — split_top_items.py makes a smaller catalog), PEER_THREADS (default 2; the
#   threaded spotrf of OpenBLAS 0.3.31, SciPy's wheel, crashes at Gowalla's 40,981 items here,
#   so PEER_THREADS=1 there).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
split="${1:-$here/../../../shared/data/gowalla}"
out="${2:-$(mktemp -d)/families.jsonl}"
recsys="${RECSYS:-$here/../../target/release/recsys}"
lambda="${LAMBDA:-100}"
: >"$out"
for family in ${FAMILIES:-ials item-knn ease bspm}; do
    echo "== $family" >&2
    extra=()
    [ "$family" = ease ] && extra=(--lambda "$lambda")
    /usr/bin/time -f '%M' -o "$out.rss.$family" \
        "$recsys" offline evaluate --train "$split/train.csv" --test "$split/test.csv" \
        --family "$family" "${extra[@]}" | tail -n1 >>"$out"
    echo "   peak RSS $(($(cat "$out.rss.$family") / 1024)) MiB" >&2
done
if [ "${PEER:-1}" != 0 ]; then
    for method in ${PEER_METHOD:-cholesky}; do
        echo "== numpy EASE ($method)" >&2
        python3 "$here/ease_numpy.py" --train "$split/train.csv" --test "$split/test.csv" \
            --lambda "$lambda" --method "$method" --top-n "${PEER_TOP_N:-0}" \
            --threads "${PEER_THREADS:-2}" | tail -n1 >>"$out"
    done
fi
python3 - "$out" <<'EOF'
import json, sys
print(f"{'run':<28} {'Recall@20':>24} {'NDCG@20':>24} {'fit s':>8} {'peak MiB':>9}")
fits = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    if "family" in r:
        name = r["family"]
        rec = f"{r['recall']['mean']:.4f} [{r['recall']['interval'][0]:.4f}, {r['recall']['interval'][1]:.4f}]"
        ndcg = f"{r['ndcg']['mean']:.4f} [{r['ndcg']['interval'][0]:.4f}, {r['ndcg']['interval'][1]:.4f}]"
    else:
        name = f"{r['peer']} λ {r['lambda']:g}"
        rec, ndcg = f"{r['recall']:.4f}", f"{r['ndcg']:.4f}"
    fits[r.get("family") or r["peer"]] = r["fit_seconds"]
    if "family" in r:
        peak = int(open(f"{sys.argv[1]}.rss.{r['family'].replace('_', '-')}").read()) * 1024
    else:
        peak = r["peak_rss_bytes"]
    print(f"{name:<28} {rec:>24} {ndcg:>24} {r['fit_seconds']:>8.1f} {peak / 2**20:>9.0f}")
for peer in ("numpy-ease-inv", "numpy-ease-cholesky"):
    if "ease" in fits and peer in fits:
        print(f"EASE fit: recsys {fits['ease']:.1f} s / {peer} {fits[peer]:.1f} s = {fits['ease'] / fits[peer]:.2f}x (target <= 0.5x)")
print(f"(lines in {sys.argv[1]})")
EOF
# The published figures on this split, from the data set's own README (never copied here).
if [ -f "$split/README.md" ]; then
    sed -n '/^## Published figures/,$p' "$split/README.md"
fi
