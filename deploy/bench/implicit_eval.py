"""Scores implicit's ALS on a split exported by `recsys offline evaluate --export-split DIR`, with
the hyper-parameters recsys trained with (`recsys offline bench` passes its own).

Trains on DIR/train.parquet, folds each held-out member's DIR/foldin.parquet rows in with
implicit's own `recalculate_user` (an exact least-squares solve, as recsys does), ranks every item
except the folded-in ones and scores DIR/target.parquet: recall@20, recall@50 (hits / min(K,
|target|)) and ndcg@100, the definitions recsys uses. Every pair has confidence 1 + alpha.
Prints one JSON line. The split reading, fitting and scoring are implicit_quality.py's.
"""
import argparse
import json
import sys

from implicit_quality import fit, read_split, score  # first: it limits OpenBLAS to one thread

import numpy as np


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
    train, foldin, target, n_items = read_split(a.split_dir)
    # Rows for every member of the split (held-out ones empty), as the factors were drawn before.
    users = sorted({u for u, _ in train + foldin + target})
    # implicit weighs an observed cell alpha * value: value 1, alpha 1 + α gives c = 1 + α r.
    setting = dict(factors=a.factors, regularization=a.regularization, alpha=1.0 + a.alpha,
                   iterations=a.iterations)
    model = fit(train, users, n_items, setting, a.threads, a.seed, cg_steps=a.cg_steps)
    per_member = score(model, foldin, target, n_items)
    print(json.dumps({
        "library": "implicit",
        "evaluated_members": len(per_member["ndcg@100"]),
        **{key: float(np.mean(values)) for key, values in per_member.items()},
    }))


if __name__ == "__main__":
    sys.exit(main())
