"""implicit's ALS on a benchmark's own split (train.csv / test.csv with user_id,item_id), tuned by
random search within a time budget and scored with the published protocol.

The search never sees test.csv: every member with at least 5 training pairs gives a seeded 20 %
of them as validation targets, each setting is trained on the remaining pairs and ranked by
validation Recall@20 over every item the member has no remaining pair with. The best setting is
then fitted on all of train.csv and scored on test.csv: every item the member has no training
pair with is ranked; Recall@20 = hits / test items, NDCG@20 binary with ideal DCG over
min(test items, 20); the mean over members with a 95 % bootstrap interval. Prints one JSON line.
"""
import argparse
import json
import os
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares


def read_pairs(path):
    data = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.int64)
    return data.reshape(-1, 2)


def matrix(pairs, shape):
    return sp.csr_matrix(
        (np.ones(len(pairs), np.float32), (pairs[:, 0], pairs[:, 1])), shape=shape
    )


def fit(train, s, threads, seed):
    model = AlternatingLeastSquares(
        factors=s["factors"],
        regularization=s["regularization"],
        alpha=s["alpha"],
        iterations=s["iterations"],
        num_threads=threads,
        random_state=seed,
    )
    model.fit(train, show_progress=False)
    return model


def score(model, train, truth, k=20, batch=2000):
    """Per member with truth: (recall@k, ndcg@k), every item without a training pair ranked."""
    users = np.unique(truth.nonzero()[0])
    uf, itf = np.asarray(model.user_factors), np.asarray(model.item_factors)
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    recall, ndcg = [], []
    for start in range(0, len(users), batch):
        u = users[start : start + batch]
        scores = uf[u] @ itf.T
        seen = train[u]
        scores[seen.nonzero()] = -np.inf
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, 1), axis=1)
        top = np.take_along_axis(top, order, 1)
        t = truth[u]
        for j in range(len(u)):
            wanted = t.indices[t.indptr[j] : t.indptr[j + 1]]
            hits = np.isin(top[j], wanted)
            recall.append(hits.sum() / len(wanted))
            ndcg.append((hits * disc).sum() / disc[: min(len(wanted), k)].sum())
    return np.array(recall), np.array(ndcg)


def interval(values, seed, resamples=1000):
    rng = np.random.default_rng(seed)
    means = [values[rng.integers(0, len(values), len(values))].mean() for _ in range(resamples)]
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def draw(rng):
    return {
        "factors": int(rng.choice([64, 128, 256])),
        "regularization": float(np.exp(rng.uniform(np.log(1e-3), np.log(100.0)))),
        "alpha": float(np.exp(rng.uniform(np.log(0.1), np.log(100.0)))),
        "iterations": 15,
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--train", required=True)
    p.add_argument("--test", required=True)
    p.add_argument("--budget-seconds", type=float, default=600.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=7)
    a = p.parse_args()
    train_pairs, test_pairs = read_pairs(a.train), read_pairs(a.test)
    shape = (
        int(max(train_pairs[:, 0].max(), test_pairs[:, 0].max())) + 1,
        int(max(train_pairs[:, 1].max(), test_pairs[:, 1].max())) + 1,
    )
    rng = np.random.default_rng(a.seed)
    # Validation: a seeded 20 % of each member's pairs (members with >= 5 pairs).
    counts = np.bincount(train_pairs[:, 0], minlength=shape[0])
    held = (rng.random(len(train_pairs)) < 0.2) & (counts[train_pairs[:, 0]] >= 5)
    fit_part, valid_part = matrix(train_pairs[~held], shape), matrix(train_pairs[held], shape)
    started = time.time()
    trials, best = [], None
    first = {"factors": 100, "regularization": 0.01, "alpha": 1.0, "iterations": 15}
    while True:
        setting = first if not trials else draw(rng)
        t0 = time.time()
        model = fit(fit_part, setting, a.threads, a.seed)
        recall, _ = score(model, fit_part, valid_part)
        took = time.time() - t0
        trials.append({"setting": setting, "validation_recall@20": float(recall.mean()), "seconds": took})
        if best is None or recall.mean() > best[1]:
            best = (setting, float(recall.mean()))
        elapsed = time.time() - started
        if elapsed + max(t["seconds"] for t in trials) > a.budget_seconds:
            break
    t0 = time.time()
    full = matrix(train_pairs, shape)
    model = fit(full, best[0], a.threads, a.seed)
    fit_seconds = time.time() - t0
    recall, ndcg = score(model, full, matrix(test_pairs, shape))
    print(
        json.dumps(
            {
                "peer": "implicit-tuned",
                "setting": best[0],
                "validation_recall@20": best[1],
                "trials": len(trials),
                "search_seconds": time.time() - started - fit_seconds,
                "recall": {"mean": float(recall.mean()), "interval": interval(recall, a.seed)},
                "ndcg": {"mean": float(ndcg.mean()), "interval": interval(ndcg, a.seed)},
                "fit_seconds": fit_seconds,
            }
        )
    )


if __name__ == "__main__":
    main()
