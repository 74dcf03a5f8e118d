"""A smaller copy of a benchmark split: its N most-interacted training items, the pairs of those
items, and the members left with both training and test pairs — for peers that cannot hold the
whole catalog (Steck's NumPy EASE, `np.linalg.inv`, holds four n × n matrices).

Usage: python3 split_top_items.py SPLIT_DIR OUT_DIR N   (train.csv and test.csv: user_id,item_id)
"""
import os
import sys

import numpy as np


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    split, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    read = lambda name: np.loadtxt(os.path.join(split, name), delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)
    train, test = read("train.csv"), read("test.csv")
    counts = np.bincount(train[:, 1], minlength=int(max(train[:, 1].max(), test[:, 1].max())) + 1)
    keep = np.zeros(len(counts), dtype=bool)
    keep[np.argsort(-counts, kind="stable")[:n]] = True
    train, test = train[keep[train[:, 1]]], test[keep[test[:, 1]]]
    members = np.intersect1d(train[:, 0], test[:, 0])
    train, test = train[np.isin(train[:, 0], members)], test[np.isin(test[:, 0], members)]
    os.makedirs(out, exist_ok=True)
    for name, pairs in (("train.csv", train), ("test.csv", test)):
        np.savetxt(os.path.join(out, name), pairs, fmt="%d", delimiter=",", header="user_id,item_id", comments="")
    items = len(np.unique(np.concatenate([train[:, 1], test[:, 1]])))
    print(f"{out}: {len(train)} training and {len(test)} test pairs, {len(members)} members, {items} items")


if __name__ == "__main__":
    main()
