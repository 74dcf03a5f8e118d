"""Is a benchmark's split a random holdout of each member's pairs? What a search validating on
held-back training pairs can expect to agree with.

Usage: python3 split_shape.py [SPLIT_DIR]   (train.csv and test.csv: user_id,item_id; default
../shared/data/gowalla)

If each member's test pairs were drawn at random from that member's pairs, an item's number of
test pairs would be binomial around its share of all pairs: the variance of the standardised
counts over items (with 20 or more pairs) is then about 1. The same statistic is printed for a
random 20 % holdout of the training pairs (what `offline tune` validates on), and the test share
by quintile of item id (ids numbered in order of first appearance make a rising share a sign of
time in the split).
"""
import os
import sys

import numpy as np


def dispersion(held, total, p):
    m = total >= 20
    z = (held[m] - total[m] * p) / np.sqrt(total[m] * p * (1 - p))
    return float(z.var()), int(m.sum())


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    split = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "..", "..", "shared", "data", "gowalla")
    read = lambda name: np.loadtxt(os.path.join(split, name), delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)
    train, test = read("train.csv"), read("test.csv")
    n = int(max(train[:, 1].max(), test[:, 1].max())) + 1
    a = np.bincount(train[:, 1], minlength=n).astype(float)
    b = np.bincount(test[:, 1], minlength=n).astype(float)
    total = a + b
    share = b.sum() / total.sum()
    var, items = dispersion(b, total, share)
    print(f"test share {share:.3f}; variance of standardised test counts over {items} items: {var:.2f} (random per-member split: about 1)")
    hold = np.random.default_rng(0).random(len(train)) < 0.2
    h = np.bincount(train[hold, 1], minlength=n).astype(float)
    var_h, _ = dispersion(h, a, h.sum() / a.sum())
    print(f"a random 20 % holdout of the training pairs: {var_h:.2f}")
    m = total >= 20
    ids = np.flatnonzero(m)
    print("test share by quintile of item id:", " ".join(
        f"{b[q].sum() / total[q].sum():.3f}" for q in np.array_split(ids, 5)))
    print("test share by quintile of item popularity:", " ".join(
        f"{b[q].sum() / total[q].sum():.3f}" for q in np.array_split(ids[np.argsort(total[ids], kind='stable')], 5)))


if __name__ == "__main__":
    main()
