#!/usr/bin/env python3
"""FAISS beside recsys's ANN retrieval: the same item vectors, queries and exact answers.

Reads, from the directory given: items.f32 (n × k little-endian f32), queries.f32 (q × k),
truth.u32 (q × top exact answers by inner product), and prints one JSON line per index setting:
the build seconds, recall@top against the exact answers, µs per query one at a time (one thread)
and queries per second for all queries in one call on `--threads` threads.

Indexes (`--indexes`): `hnsw`, IndexHNSWFlat with the inner-product metric; `hnsw_mips`, the
same graph in L2 over the items with one dimension added so that the nearest by L2 is the largest
inner product (Bachrach et al. 2014: an item x becomes [x, sqrt(M² − |x|²)] with M the largest
norm, a query q becomes [q, 0]), the usual way to search inner products with HNSW when the items'
norms differ; `ivf_pq`, IndexIVFPQ (nlist √n, 32 sub-quantisers, inner product).

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
    p.add_argument("--ef-construction", type=int, default=64, help="HNSW efConstruction (recsys bench passes its own)")
    p.add_argument("--ef", default="128,256,512", help="HNSW efSearch values")
    p.add_argument("--indexes", default="hnsw,hnsw_mips,ivf_pq", help="which indexes, comma-separated")
    p.add_argument("--nprobe", default="16,64,128")
    a = p.parse_args()
    import faiss

    items = np.fromfile(os.path.join(a.dir, "items.f32"), dtype="<f4").reshape(-1, a.k)
    queries = np.fromfile(os.path.join(a.dir, "queries.f32"), dtype="<f4").reshape(-1, a.k)
    truth = np.fromfile(os.path.join(a.dir, "truth.u32"), dtype="<u4").reshape(len(queries), -1)[:, : a.top]

    def recall(found):
        hits = sum(len(set(f[f >= 0].tolist()) & set(t.tolist())) for f, t in zip(found, truth))
        return hits / truth.size

    def measure(index, name, params, set_param, queries=queries):
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

    def hnsw(name, vectors, metric):
        faiss.omp_set_num_threads(a.threads)
        index = faiss.IndexHNSWFlat(vectors.shape[1], a.m, metric)
        index.hnsw.efConstruction = a.ef_construction
        started = time.perf_counter()
        # In chunks (the same graph as one call) so a long build shows how far it is.
        chunk = max(100_000, len(vectors) // 20)
        for first in range(0, len(vectors), chunk):
            index.add(vectors[first : first + chunk])
            done = min(first + chunk, len(vectors))
            print(f"faiss {name}: {done} of {len(vectors)} added, {time.perf_counter() - started:.0f} s",
                  file=sys.stderr, flush=True)
        built[name] = time.perf_counter() - started
        print(f"faiss {name} built in {built[name]:.1f} s", file=sys.stderr, flush=True)
        return index

    built = {}
    wanted = set(a.indexes.split(","))
    efs = [int(x) for x in a.ef.split(",")]
    if "hnsw" in wanted:
        index = hnsw("hnsw", items, faiss.METRIC_INNER_PRODUCT)
        measure(index, "hnsw", efs, lambda ef: setattr(index.hnsw, "efSearch", ef))
        del index

    if "hnsw_mips" in wanted:
        # The added dimension is computed as part of the build, and timed with it.
        started = time.perf_counter()
        norms = np.einsum("ij,ij->i", items, items)
        extra = np.sqrt(np.maximum(norms.max() - norms, 0.0)).astype("<f4")
        lifted = np.hstack([items, extra[:, None]])
        lift_s = time.perf_counter() - started
        index = hnsw("hnsw_mips", lifted, faiss.METRIC_L2)
        built["hnsw_mips"] += lift_s
        del lifted
        lifted_queries = np.hstack([queries, np.zeros((len(queries), 1), dtype="<f4")])
        measure(index, "hnsw_mips", efs, lambda ef: setattr(index.hnsw, "efSearch", ef), lifted_queries)
        del index

    if "ivf_pq" in wanted:
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
