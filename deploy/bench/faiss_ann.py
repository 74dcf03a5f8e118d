#!/usr/bin/env python3
"""FAISS beside recsys's ANN retrieval: the same item vectors, queries and exact answers.

Reads, from the directory given: items.f32 (n × k little-endian f32), queries.f32 (q × k),
truth.u32 (q × top exact answers by inner product), and prints one JSON line per index setting:
the build seconds, recall@top against the exact answers, µs per query one at a time (one thread)
and queries per second for all queries in one call on `--threads` threads.

    python3 deploy/bench/faiss_ann.py DIR --k 64 --top 100 --threads 2
"""
import argparse
import json
import os
import sys
import time

import numpy as np


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir")
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--top", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--m", type=int, default=16, help="HNSW links per node")
    p.add_argument("--ef-construction", type=int, default=128)
    p.add_argument("--ef", default="128,256,512", help="HNSW efSearch values")
    p.add_argument("--ivf-pq", action="store_true", help="also IVF-PQ (nlist √n, 32 sub-quantisers)")
    p.add_argument("--nprobe", default="16,64,128")
    a = p.parse_args()
    import faiss

    items = np.fromfile(os.path.join(a.dir, "items.f32"), dtype="<f4").reshape(-1, a.k)
    queries = np.fromfile(os.path.join(a.dir, "queries.f32"), dtype="<f4").reshape(-1, a.k)
    truth = np.fromfile(os.path.join(a.dir, "truth.u32"), dtype="<u4").reshape(len(queries), -1)[:, : a.top]

    def recall(found):
        hits = sum(len(set(f[f >= 0].tolist()) & set(t.tolist())) for f, t in zip(found, truth))
        return hits / truth.size

    def measure(index, name, params, set_param):
        for value in params:
            set_param(value)
            faiss.omp_set_num_threads(1)
            started = time.perf_counter()
            found = np.vstack([index.search(queries[i : i + 1], a.top)[1] for i in range(len(queries))])
            one = (time.perf_counter() - started) / len(queries) * 1e6
            faiss.omp_set_num_threads(a.threads)
            started = time.perf_counter()
            index.search(queries, a.top)
            qps = len(queries) / (time.perf_counter() - started)
            print(json.dumps({"index": name, "param": value, "build_s": built[name], "recall": recall(found),
                              "us_per_query": one, "qps_batch": qps}), flush=True)

    built = {}
    faiss.omp_set_num_threads(a.threads)
    hnsw = faiss.IndexHNSWFlat(a.k, a.m, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = a.ef_construction
    started = time.perf_counter()
    # In chunks (the same graph as one call) so a long build shows how far it is.
    chunk = max(100_000, len(items) // 20)
    for first in range(0, len(items), chunk):
        hnsw.add(items[first : first + chunk])
        done = min(first + chunk, len(items))
        print(f"faiss hnsw: {done} of {len(items)} added, {time.perf_counter() - started:.0f} s",
              file=sys.stderr, flush=True)
    built["hnsw"] = time.perf_counter() - started
    print(f"faiss hnsw built in {built['hnsw']:.1f} s", file=sys.stderr, flush=True)
    measure(hnsw, "hnsw", [int(x) for x in a.ef.split(",")], lambda ef: setattr(hnsw.hnsw, "efSearch", ef))
    del hnsw

    if a.ivf_pq:
        faiss.omp_set_num_threads(a.threads)
        nlist = int(np.sqrt(len(items)))
        quantizer = faiss.IndexFlatIP(a.k)
        ivf = faiss.IndexIVFPQ(quantizer, a.k, nlist, 32, 8, faiss.METRIC_INNER_PRODUCT)
        started = time.perf_counter()
        sample = items[np.random.default_rng(0).choice(len(items), min(len(items), 50 * nlist), replace=False)]
        ivf.train(sample)
        ivf.add(items)
        built["ivf_pq"] = time.perf_counter() - started
        print(f"faiss ivf-pq built in {built['ivf_pq']:.1f} s", file=sys.stderr, flush=True)
        measure(ivf, "ivf_pq", [int(x) for x in a.nprobe.split(",")], lambda n: setattr(ivf, "nprobe", n))


if __name__ == "__main__":
    main()
