"""Scores implicit's ALS on a split exported by `recsys offline evaluate --export-split DIR`.

Trains on DIR/train.parquet, folds each held-out member's DIR/foldin.parquet rows in with
implicit's own `recalculate_user` (an exact least-squares solve, as recsys does), ranks every item
except the folded-in ones and scores DIR/target.parquet: recall@20, recall@50 (hits / min(K,
|target|)) and ndcg@100, the definitions recsys uses. Every pair has confidence 1 + alpha.
Prints one JSON line.
"""
import argparse
import json
import os
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import pyarrow.parquet as pq
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares


def pairs(path):
    t = pq.read_table(path).to_pydict()
    return list(zip(t["user_id"], t["item_id"]))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("split_dir")
    p.add_argument("--factors", type=int, default=64)
    p.add_argument("--iterations", type=int, default=15)
    p.add_argument("--cg-steps", type=int, default=3)
    p.add_argument("--regularization", type=float, default=0.1)
    p.add_argument("--alpha", type=float, default=10.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=42)
    a = p.parse_args()
    train = pairs(os.path.join(a.split_dir, "train.parquet"))
    foldin = pairs(os.path.join(a.split_dir, "foldin.parquet"))
    target = pairs(os.path.join(a.split_dir, "target.parquet"))
    users = sorted({u for u, _ in train + foldin + target})
    items = sorted({i for _, i in train + foldin + target})
    uix = {u: n for n, u in enumerate(users)}
    iix = {i: n for n, i in enumerate(items)}
    confidence = 1.0 + a.alpha

    def csr(rows, row_index, n_rows):
        r = [row_index[u] for u, _ in rows]
        c = [iix[i] for _, i in rows]
        d = np.full(len(rows), confidence, dtype=np.float32)
        return sp.csr_matrix((d, (r, c)), shape=(n_rows, len(items)))

    model = AlternatingLeastSquares(
        factors=a.factors, regularization=a.regularization, alpha=1.0,
        iterations=a.iterations, use_cg=True, calculate_training_loss=False,
        num_threads=a.threads, random_state=a.seed,
    )
    model.cg_steps = a.cg_steps
    model.fit(csr(train, uix, len(users)), show_progress=False)

    held = sorted({u for u, _ in target})
    hix = {u: n for n, u in enumerate(held)}
    foldin_matrix = csr([(u, i) for u, i in foldin if u in hix], hix, len(held))
    vectors = model.recalculate_user(np.arange(len(held)), foldin_matrix)
    scores = np.asarray(vectors) @ np.asarray(model.item_factors).T
    targets = {}
    for u, i in target:
        targets.setdefault(hix[u], set()).add(iix[i])
    recall20 = recall50 = ndcg100 = 0.0
    for h in range(len(held)):
        s = scores[h].copy()
        s[foldin_matrix[h].indices] = -np.inf
        top = np.argpartition(-s, 100)[:100]
        top = top[np.argsort(-s[top], kind="stable")]
        t = targets[h]
        hits = [int(x) in t for x in top]
        recall20 += sum(hits[:20]) / min(20, len(t))
        recall50 += sum(hits[:50]) / min(50, len(t))
        dcg = sum(1.0 / np.log2(r + 2) for r, hit in enumerate(hits) if hit)
        idcg = sum(1.0 / np.log2(r + 2) for r in range(min(100, len(t))))
        ndcg100 += dcg / idcg
    n = len(held)
    print(json.dumps({
        "library": "implicit",
        "evaluated_members": n,
        "recall@20": recall20 / n,
        "recall@50": recall50 / n,
        "ndcg@100": ndcg100 / n,
    }))


if __name__ == "__main__":
    sys.exit(main())
