"""Times implicit's CPU ALS (conjugate gradient) on the matrix `recsys offline bench` wrote.

Usage: python3 implicit_als.py MATRIX_DIR --factors 64 --iterations 15 --cg-steps 3
           --regularization 0.1 --threads 2 --seed 42
MATRIX_DIR holds indptr.i64, indices.i32, data.f32 (raw little-endian) and meta.json; `data` is
already the confidence c = 1 + alpha * r, so implicit runs with alpha = 1 and solves the same
problem as recsys. Prints one JSON line.
"""
import argparse
import json
import os
import resource
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares


def main():
    p = argparse.ArgumentParser()
    p.add_argument("matrix_dir")
    p.add_argument("--factors", type=int, default=64)
    p.add_argument("--iterations", type=int, default=15)
    p.add_argument("--cg-steps", type=int, default=3)
    p.add_argument("--regularization", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=42)
    a = p.parse_args()
    meta = json.load(open(os.path.join(a.matrix_dir, "meta.json")))
    indptr = np.fromfile(os.path.join(a.matrix_dir, "indptr.i64"), dtype="<i8")
    indices = np.fromfile(os.path.join(a.matrix_dir, "indices.i32"), dtype="<i4")
    data = np.fromfile(os.path.join(a.matrix_dir, "data.f32"), dtype="<f4")
    matrix = sp.csr_matrix((data, indices, indptr), shape=(meta["rows"], meta["cols"]))
    model = AlternatingLeastSquares(
        factors=a.factors,
        regularization=a.regularization,
        alpha=1.0,
        iterations=a.iterations,
        use_cg=True,
        calculate_training_loss=False,
        num_threads=a.threads,
        random_state=a.seed,
    )
    model.cg_steps = a.cg_steps
    started = time.perf_counter()
    model.fit(matrix, show_progress=False)
    seconds = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({
        "library": "implicit",
        "seconds": seconds,
        "seconds_per_iteration": seconds / a.iterations,
        "peak_rss_mib": peak_mib,
    }))


if __name__ == "__main__":
    sys.exit(main())
