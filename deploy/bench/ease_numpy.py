"""EASE in NumPy, the peer of recsys's EASE, scored with the published protocol of a split.

Usage: python3 ease_numpy.py --train train.csv --test test.csv --lambda 100
           [--method inv|cholesky] [--lapack numpy|scipy] [--dtype float32|float64] [--top-n 0]
           [--k 20] [--threads 2]

--method inv is Steck's reference code (P = np.linalg.inv(XᵀX + λI); it holds about four n×n
matrices at once); --method cholesky is LAPACK's potrf + potri in place (one n×n matrix), the
fastest a NumPy user gets: from the OpenBLAS NumPy ships (--lapack numpy, called through ctypes)
or SciPy's. At Gowalla's 40,981 items OpenBLAS's threaded potrf crashes (SIGSEGV in
sgemm_otcopy under ssyrk_thread_LN, spotrf_L_parallel; seen with OpenBLAS 0.3.27 and 0.3.31, both
builds, and with OPENBLAS_CORETYPE=Haswell), so at that size run it with --threads 1. --top-n N keeps the N largest positive weights of each row, as
recsys serves EASE; 0 keeps B dense. The protocol: every item the member has no training pair
with is ranked; Recall@k = hits / test items; NDCG@k binary with ideal DCG over min(test, k).
Prints one JSON line: recall, ndcg, fit_seconds (XᵀX to B), peak RSS.
"""
import argparse
import json
import os
import resource
import sys
import time


def numpy_lapack(dtype):
    """potrf and potri (in place, SciPy's calling convention) from the OpenBLAS NumPy ships, whose
    integers are 64-bit, called through ctypes."""
    import ctypes
    import glob

    import numpy as np

    here = os.path.dirname(np.__file__)
    found = glob.glob(os.path.join(here, "..", "numpy.libs", "libscipy_openblas64_*.so"))
    if not found:
        sys.exit("NumPy's OpenBLAS (numpy.libs/libscipy_openblas64_*.so) not found; use --lapack scipy")
    lib = ctypes.CDLL(found[0])
    prefix = "s" if dtype == np.float32 else "d"
    i64 = ctypes.c_int64

    def call(name):
        fn = getattr(lib, f"scipy_{prefix}{name}_64_")

        def run(a, lower=1, **_):
            assert a.flags.f_contiguous and a.shape[0] == a.shape[1]
            n, info = i64(a.shape[0]), i64(0)
            uplo = ctypes.c_char(b"L" if lower else b"U")
            fn(ctypes.byref(uplo), ctypes.byref(n), a.ctypes.data_as(ctypes.c_void_p),
               ctypes.byref(n), ctypes.byref(info), ctypes.c_size_t(1))
            return a, info.value

        return run

    return call("potrf"), call("potri")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--train", required=True)
    p.add_argument("--test", required=True)
    p.add_argument("--lambda", dest="lam", type=float, default=100.0)
    p.add_argument("--method", choices=["inv", "cholesky"], default="inv")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--top-n", type=int, default=0)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lapack", choices=["numpy", "scipy"], default="numpy",
                   help="whose OpenBLAS runs potrf/potri: NumPy's (64-bit indices) or SciPy's (32-bit; "
                        "its threaded potrf crashes in ssyrk at Gowalla's 41k items)")
    a = p.parse_args()
    os.environ["OPENBLAS_NUM_THREADS"] = str(a.threads)
    os.environ["OMP_NUM_THREADS"] = str(a.threads)
    import numpy as np
    import scipy.sparse as sp

    def read(path):
        rows = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)
        return rows[:, 0], rows[:, 1]

    tu, ti = read(a.train)
    su, si = read(a.test)
    members = np.unique(np.concatenate([tu, su]))
    items = np.unique(np.concatenate([ti, si]))
    mu = {m: i for i, m in enumerate(members)}
    it = {m: i for i, m in enumerate(items)}
    u = np.fromiter((mu[x] for x in tu), dtype=np.int64, count=len(tu))
    i = np.fromiter((it[x] for x in ti), dtype=np.int64, count=len(ti))
    n_users, n = len(members), len(items)
    dtype = np.dtype(a.dtype)
    X = sp.csr_matrix((np.ones(len(u), dtype=dtype), (u, i)), shape=(n_users, n))
    X.data[:] = 1  # repeated pairs count once

    started = time.perf_counter()
    G = (X.T @ X).toarray().astype(dtype, copy=False)
    G[np.diag_indices(n)] += a.lam
    if a.method == "inv":
        P = np.linalg.inv(G)
        del G
    else:
        if a.lapack == "numpy":
            potrf, potri = numpy_lapack(dtype)
        else:
            from scipy.linalg import lapack

            potrf, potri = (lapack.spotrf, lapack.spotri) if dtype == np.float32 else (lapack.dpotrf, lapack.dpotri)
        F = G if G.flags.f_contiguous else G.T  # Fortran order, no copy (G is symmetric)
        L, info = potrf(F, lower=1, overwrite_a=1, clean=0)
        if info != 0:
            sys.exit(f"potrf failed: {info}")
        P, info = potri(L, lower=1, overwrite_c=1)
        if info != 0:
            sys.exit(f"potri failed: {info}")
        for r0 in range(0, n, 2048):  # mirror the lower triangle up, a block of columns at a time
            r1 = min(n, r0 + 2048)
            P[:r0, r0:r1] = P[r0:r1, :r0].T
            D = P[r0:r1, r0:r1]
            upper = np.triu_indices(r1 - r0, 1)
            D[upper] = D.T[upper]
    diag = np.diag(P).copy()
    B = P
    B /= -diag[np.newaxis, :]
    B[np.diag_indices(n)] = 0
    if a.top_n > 0:
        top_n = min(a.top_n, n - 1)
        rows, cols, vals = [], [], []
        for r0 in range(0, n, 1024):
            block = B[r0 : r0 + 1024]
            idx = np.argpartition(-block, top_n - 1, axis=1)[:, :top_n]
            v = np.take_along_axis(block, idx, axis=1)
            keep = v > 0
            rr = np.repeat(np.arange(r0, r0 + block.shape[0]), top_n).reshape(idx.shape)
            rows.append(rr[keep]); cols.append(idx[keep]); vals.append(v[keep])
        B = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    fit_seconds = time.perf_counter() - started

    test = {}
    for x, y in zip(su, si):
        test.setdefault(mu[x], set()).add(it[y])
    evaluated = sorted(test)
    discount = 1.0 / np.log2(np.arange(2, a.k + 2))
    recalls, ndcgs = [], []
    started = time.perf_counter()
    for b0 in range(0, len(evaluated), 1024):
        batch = evaluated[b0 : b0 + 1024]
        Xb = X[batch]
        S = Xb @ B
        S = S.toarray() if sp.issparse(S) else np.asarray(S)
        S = S.astype(np.float64)
        S[Xb.nonzero()] = -np.inf
        top = np.argpartition(-S, a.k, axis=1)[:, : a.k]
        order = np.argsort(-np.take_along_axis(S, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        for row, member in zip(top, batch):
            target = test[member]
            hits = np.array([x in target for x in row], dtype=np.float64)
            recalls.append(hits.sum() / len(target))
            ideal = discount[: min(len(target), a.k)].sum()
            ndcgs.append((hits * discount).sum() / ideal)
    print(json.dumps({
        "peer": f"numpy-ease-{a.method}",
        "dtype": a.dtype,
        "lambda": a.lam,
        "top_n": a.top_n,
        "items": n,
        "members": n_users,
        "evaluated_members": len(evaluated),
        "recall": float(np.mean(recalls)),
        "ndcg": float(np.mean(ndcgs)),
        "fit_seconds": fit_seconds,
        "score_seconds": time.perf_counter() - started,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "threads": a.threads,
    }))


if __name__ == "__main__":
    main()
