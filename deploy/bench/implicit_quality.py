"""implicit's ALS on a split exported by `recsys offline evaluate --export-split DIR`: with the
library's default hyper-parameters, and tuned by random search within a time budget.

The tuning never sees the test members: validation members are carved out of DIR/train.parquet
(members with >= 5 pairs, a seeded 20 %, each one's pairs split 80/20 into fold-in and target),
exactly as `recsys offline tune` carves its own. Each setting is trained on the rest, the
validation members are folded in with implicit's `recalculate_user` and scored by NDCG@100; the
best setting is then fitted on all of train.parquet and scored on the test split (foldin.parquet /
target.parquet) like implicit_eval.py: recall@20, recall@50 (hits / min(K, |target|)), ndcg@100,
each with a 95 % bootstrap interval over members (1000 resamples).

Data is binary (every pair 1.0, as the split carries no strengths); implicit weighs an observed
cell `alpha * 1.0` and an unobserved one 1. Prints one JSON line.
"""
import argparse
import json
import os
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import pyarrow.parquet as pq
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares

DEFAULTS = dict(factors=100, regularization=0.01, alpha=1.0, iterations=15)


def pairs(path):
    t = pq.read_table(path).to_pydict()
    return list(zip(t["user_id"], t["item_id"]))


def csr(rows, row_index, n_rows, n_items):
    r = [row_index[u] for u, _ in rows]
    c = [i for _, i in rows]
    d = np.ones(len(rows), dtype=np.float32)
    return sp.csr_matrix((d, (r, c)), shape=(n_rows, n_items))


def fit(train_rows, users, n_items, s, threads, seed, cg_steps=None):
    model = AlternatingLeastSquares(
        factors=s["factors"], regularization=s["regularization"], alpha=s["alpha"],
        iterations=s["iterations"], use_cg=True, calculate_training_loss=False,
        num_threads=threads, random_state=seed,
    )
    if cg_steps is not None:
        model.cg_steps = cg_steps
    uix = {u: n for n, u in enumerate(users)}
    model.fit(csr(train_rows, uix, len(users), n_items), show_progress=False)
    return model


def score(model, foldin, target, n_items):
    """Per-member recall@20, recall@50, ndcg@100 of the held members."""
    held = sorted({u for u, _ in target})
    hix = {u: n for n, u in enumerate(held)}
    fm = csr([(u, i) for u, i in foldin if u in hix], hix, len(held), n_items)
    vectors = model.recalculate_user(np.arange(len(held)), fm)
    scores = np.asarray(vectors) @ np.asarray(model.item_factors).T
    targets = {}
    for u, i in target:
        targets.setdefault(hix[u], set()).add(i)
    out = {"recall@20": [], "recall@50": [], "ndcg@100": []}
    for h in range(len(held)):
        s = scores[h].copy()
        s[fm[h].indices] = -np.inf
        top = np.argpartition(-s, 100)[:100]
        top = top[np.argsort(-s[top], kind="stable")]
        t = targets[h]
        hits = [int(x) in t for x in top]
        out["recall@20"].append(sum(hits[:20]) / min(20, len(t)))
        out["recall@50"].append(sum(hits[:50]) / min(50, len(t)))
        dcg = sum(1.0 / np.log2(r + 2) for r, hit in enumerate(hits) if hit)
        idcg = sum(1.0 / np.log2(r + 2) for r in range(min(100, len(t))))
        out["ndcg@100"].append(dcg / idcg)
    return out


def summary(per_member, seed):
    rng = np.random.default_rng(seed)
    result = {"evaluated_members": len(per_member["ndcg@100"]), "metrics": {}, "intervals": {}}
    for key, values in per_member.items():
        v = np.asarray(values)
        means = v[rng.integers(0, len(v), size=(1000, len(v)))].mean(axis=1)
        result["metrics"][key] = float(v.mean())
        result["intervals"][key] = [float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))]
    return result


def validation_split(train, seed):
    by_user = {}
    for u, i in train:
        by_user.setdefault(u, []).append(i)
    rng = np.random.default_rng(seed)
    eligible = sorted(u for u, items in by_user.items() if len(items) >= 5)
    held = set(rng.choice(eligible, size=max(1, round(0.2 * len(eligible))), replace=False).tolist())
    rest, foldin, target = [], [], []
    for u, items in by_user.items():
        if u not in held:
            rest.extend((u, i) for i in items)
            continue
        items = list(items)
        rng.shuffle(items)
        n_target = max(1, round(0.2 * len(items)))
        target.extend((u, i) for i in items[:n_target])
        foldin.extend((u, i) for i in items[n_target:])
    return rest, foldin, target


def draw(rng):
    return dict(
        factors=int(rng.choice([32, 64, 128])),
        regularization=float(np.exp(rng.uniform(np.log(1e-3), np.log(100.0)))),
        alpha=float(np.exp(rng.uniform(np.log(0.1), np.log(100.0)))),
        iterations=int(rng.choice([4, 8, 16])),
    )


def read_split(split_dir):
    """train, foldin, target as (user id, item index) pairs, and the number of items."""
    train = pairs(os.path.join(split_dir, "train.parquet"))
    foldin = pairs(os.path.join(split_dir, "foldin.parquet"))
    target = pairs(os.path.join(split_dir, "target.parquet"))
    items = sorted({i for _, i in train + foldin + target})
    iix = {i: n for n, i in enumerate(items)}
    index = lambda rows: [(u, iix[i]) for u, i in rows]
    return index(train), index(foldin), index(target), len(items)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("split_dir")
    p.add_argument("--budget-seconds", type=float, default=60.0)
    p.add_argument("--max-trials", type=int, default=500)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=7)
    a = p.parse_args()
    train, foldin, target, n_items = read_split(a.split_dir)
    items = range(n_items)
    train_users = sorted({u for u, _ in train})

    default_model = fit(train, train_users, len(items), DEFAULTS, a.threads, a.seed)
    default = summary(score(default_model, foldin, target, len(items)), a.seed)
    default["setting"] = DEFAULTS

    rest, v_foldin, v_target = validation_split(train, a.seed)
    rest_users = sorted({u for u, _ in rest})
    rng = np.random.default_rng(a.seed)
    started = time.monotonic()
    best, best_score, trials = None, -1.0, []
    while len(trials) < a.max_trials and time.monotonic() - started < a.budget_seconds:
        s = draw(rng)
        m = fit(rest, rest_users, len(items), s, a.threads, a.seed)
        v = float(np.mean(score(m, v_foldin, v_target, len(items))["ndcg@100"]))
        trials.append({"setting": s, "ndcg@100": v})
        print(json.dumps({"trial": len(trials) - 1, **trials[-1]}), file=sys.stderr)
        if v > best_score:
            best, best_score = s, v
    search_seconds = time.monotonic() - started
    tuned_model = fit(train, train_users, len(items), best, a.threads, a.seed)
    tuned = summary(score(tuned_model, foldin, target, len(items)), a.seed)
    tuned.update(setting=best, validation_ndcg100=best_score, trials=len(trials),
                 search_seconds=search_seconds)
    print(json.dumps({"library": "implicit", "default": default, "tuned": tuned}))


if __name__ == "__main__":
    sys.exit(main())
