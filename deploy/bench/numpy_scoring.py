"""The peer of `recsys online bench`'s scoring figure: NumPy's `Y @ u` then `argpartition` for the
top k (sorted), per query, on the matrix recsys scored in the same run.

With --batch B, the queries are scored B at a time (`Y @ U`, one matrix product per batch, then
a top k per column): the peer of recsys's batched scan.

Usage: python3 numpy_scoring.py DIR --k 100 --rounds 3 [--batch 32]
DIR holds items.f32 (n x factors, raw little-endian, row-major), queries.f32 (q x factors) and
meta.json {"items": n, "factors": f, "queries": q}. Prints one JSON line with the fastest round's
microseconds per query.
"""
import argparse
import json
import os
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np


def main():
    p = argparse.ArgumentParser()
    p.add_argument("dir")
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=1)
    a = p.parse_args()
    meta = json.load(open(os.path.join(a.dir, "meta.json")))
    n, f, q = meta["items"], meta["factors"], meta["queries"]
    items = np.fromfile(os.path.join(a.dir, "items.f32"), dtype="<f4").reshape(n, f)
    queries = np.fromfile(os.path.join(a.dir, "queries.f32"), dtype="<f4").reshape(q, f)
    best = float("inf")
    checksum = 0
    for _ in range(a.rounds):
        start = time.perf_counter()
        for b in range(0, q, a.batch):
            block = items @ queries[b : b + a.batch].T
            for scores in block.T:
                top = np.argpartition(-scores, a.k)[: a.k]
                top = top[np.argsort(-scores[top])]
                checksum += int(top[0])
        best = min(best, (time.perf_counter() - start) / q)
    print(json.dumps({"us_per_query": best * 1e6, "queries": q, "checksum": checksum}))


if __name__ == "__main__":
    main()
