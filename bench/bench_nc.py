"""Benchmark: the NC table of one epoch (metrics + null baselines) for d = 64 and d = 512.

Builds synthetic feature dumps with the paper's probe sizes (docs/CONTRACTS.md layout) and times
``metacollapse.nc.epoch_nc_table`` (best of ``--repeats``) twice: with an empty null cache (the first epoch of a
run, which computes the null baselines) and with the cache a previous epoch filled (every later epoch).
Prints a table and one line per figure::

    RESULT bench=nc dim=64 first_epoch_s=... later_epoch_s=...

Run: ``.venv/bin/python bench/bench_nc.py`` (``--blas-threads 1`` pins OpenBLAS to one thread; it must be set
before numpy is imported, hence the late imports).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

DIMS = (64, 512)
# name: (kind, episodes, n_way, n_support, n_query, classes in the split)
PROBES = {
    "train_episodes": ("episodic", 20, 60, 5, 5, 4112),
    "val_episodes": ("episodic", 50, 5, 5, 15, 688),
    "train_classes": ("classes", 1, 60, 5, 15, 4112),
    "test_classes": ("classes", 1, 60, 5, 15, 1692),
}


def synthetic_dump(dim: int, seed: int = 0) -> dict:
    """A feature dump of the paper's probe sizes: ReLU(class centre + noise), float32, rows in probe order."""
    import numpy as np

    rng = np.random.default_rng(seed)
    feats, labels, probe, episode, role = [], [], [], [], []
    for p, (kind, episodes, n_way, n_sup, n_qry, n_classes) in enumerate(PROBES.values()):
        centres = rng.normal(size=(n_classes, dim)).astype(np.float32)
        for ep in range(episodes):
            classes = rng.choice(n_classes, size=n_way, replace=False)
            lab = np.repeat(classes, n_sup + n_qry)
            noise = 0.7 * rng.normal(size=(lab.size, dim)).astype(np.float32)
            feats.append(np.maximum(centres[lab] + noise, 0.0))
            labels.append(lab)
            probe.append(np.full(lab.size, p))
            episode.append(np.full(lab.size, ep if kind == "episodic" else 0))
            role.append(np.tile(np.r_[np.zeros(n_sup), np.ones(n_qry)], n_way))
    meta = {"run": f"bench_d{dim}", "learner": "protonet", "backbone": "conv4", "width": dim, "seed": 0}
    return {
        "features": np.concatenate(feats).astype(np.float32),
        "labels": np.concatenate(labels).astype(np.int64),
        "probe": np.concatenate(probe).astype(np.int64),
        "episode": np.concatenate(episode).astype(np.int64),
        "role": np.concatenate(role).astype(np.int8),
        "probe_names": np.array(list(PROBES)),
        "probe_kinds": np.array([v[0] for v in PROBES.values()]),
        "probe_bn_modes": np.array(["train", "eval", "eval", "eval"]),
        "probe_splits": np.array(["train", "val", "train", "test"]),
        "epoch": np.array(1, dtype=np.int64),
        "meta": np.array(json.dumps(meta)),
    }


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--blas-threads", type=int, default=None, help="pin OpenBLAS/OMP/MKL thread counts")
    args = parser.parse_args()
    if args.blas_threads is not None:
        if "numpy" in sys.modules:
            raise RuntimeError("--blas-threads must be applied before numpy is imported")
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.blas_threads)

    from metacollapse.nc import NULL_MIN_DRAWS, NULL_SAMPLES, epoch_nc_table

    threads = os.environ.get("OPENBLAS_NUM_THREADS", "default")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"cpus={os.cpu_count()}  blas_threads={threads}  load_avg=({load})  best of {args.repeats}")
    print(f"null baselines: {NULL_SAMPLES} rows per layout, at least {NULL_MIN_DRAWS} draws")
    print(f"{'d':>4} {'N':>6} {'rows':>5} {'first_epoch_s':>14} {'later_epoch_s':>14} {'nulls_only_s':>13}")
    results = []
    for dim in DIMS:
        dump = synthetic_dump(dim)
        first = best_of(args.repeats, lambda dump=dump: epoch_nc_table(dump, null_cache={}))
        cache: dict = {}
        rows = len(epoch_nc_table(dump, null_cache=cache))
        later = best_of(args.repeats, lambda dump=dump, cache=cache: epoch_nc_table(dump, null_cache=cache))
        print(f"{dim:>4} {dump['features'].shape[0]:>6} {rows:>5} {first:>14.3f} {later:>14.3f} {first - later:>13.3f}")
        results.append((dim, first, later))
    for dim, first, later in results:
        print(f"RESULT bench=nc dim={dim} first_epoch_s={first:.3f} later_epoch_s={later:.3f}")


if __name__ == "__main__":
    main()
