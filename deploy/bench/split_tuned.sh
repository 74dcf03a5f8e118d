#!/usr/bin/env bash
# Tuned against tuned on a benchmark's own split: `recsys offline tune` on the training pairs
# only (validation members carved out of them, strong generalization), the chosen family and
# setting scored on the split's test pairs with the published protocol (`offline evaluate
# --train/--test --params-from`); implicit's ALS tuned by random search on the same training
# pairs in the same budget (deploy/bench/implicit_split.py) and scored the same way.
#
# Usage: deploy/bench/split_tuned.sh [SPLIT_DIR] [BUDGET]   (default ../shared/data/gowalla, 10m)
#   RECSYS (default target/release/recsys), OUT (default a temporary directory), PEER=0 skips
#   implicit.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
split="${1:-$here/../../../shared/data/gowalla}"
budget="${2:-10m}"
recsys="${RECSYS:-$here/../../target/release/recsys}"
out="${OUT:-$(mktemp -d)}"
mkdir -p "$out"
# The training pairs as an interaction log (one `play` per pair).
python3 - "$split/train.csv" "$out/interactions.parquet" <<'PY'
import sys
import pyarrow as pa, pyarrow.csv as csv, pyarrow.parquet as pq
t = csv.read_csv(sys.argv[1], convert_options=csv.ConvertOptions(column_types={"user_id": pa.string(), "item_id": pa.string()}))
n = t.num_rows
t = t.append_column("event_type", pa.array(["play"] * n)).append_column("value", pa.nulls(n, pa.float64()))
t = t.append_column("ts", pa.array([1_700_000_000_000 + i for i in range(n)], pa.timestamp("ms")))
pq.write_table(t, sys.argv[2])
PY
echo "== recsys offline tune --budget $budget" >&2
"$recsys" offline tune --interactions "$out/interactions.parquet" --budget "$budget" --out "$out/tuning" >/dev/null
echo "== recsys, the chosen family on the test pairs" >&2
"$recsys" offline evaluate --train "$split/train.csv" --test "$split/test.csv" \
    --params-from "$out/tuning" | tail -n1 >"$out/recsys.json"
if [ "${PEER:-1}" != 0 ]; then
    seconds=$(python3 -c "import json; print(json.load(open('$out/tuning/tuning.json'))['search_seconds'])" 2>/dev/null || echo 600)
    echo "== implicit tuned, $seconds s" >&2
    python3 "$here/implicit_split.py" --train "$split/train.csv" --test "$split/test.csv" \
        --budget-seconds "$seconds" | tail -n1 >"$out/implicit.json"
fi
python3 - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
t = json.load(open(f"{out}/tuning/tuning.json"))
print(f"tuning: chose {t.get('family')}; best validation per family {t.get('family_best')}")
print(f"{'run':<34} {'Recall@20':>26} {'NDCG@20':>26}")
def row(name, r):
    f = lambda m: f"{r[m]['mean']:.4f} [{r[m]['interval'][0]:.4f}, {r[m]['interval'][1]:.4f}]"
    print(f"{name:<34} {f('recall'):>26} {f('ndcg'):>26}")
r = json.load(open(f"{out}/recsys.json")); row(f"recsys tuned ({r['family']})", r)
if os.path.exists(f"{out}/implicit.json"):
    p = json.load(open(f"{out}/implicit.json")); row("implicit tuned", p)
    print(f"recsys - implicit: Recall@20 {r['recall']['mean'] - p['recall']['mean']:+.4f}, NDCG@20 {r['ndcg']['mean'] - p['ndcg']['mean']:+.4f}")
print(f"(files in {out})")
PY
