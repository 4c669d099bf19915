"""Benchmark: the NC table of one epoch (metrics, nulls, bootstrap intervals) at the paper's probe sizes.

Synthetic feature dumps (docs/CONTRACTS.md layout) of the Conv-4 paper protocol's default probes (60-way 5+5 x 20
episodes, 5-way 5+15 x 50, two probes of 60 classes x 20 images) at d = 64 and d = 512, timed with
``metacollapse.nc_table.epoch_nc_table`` (best of ``--repeats``) for each ``--bootstrap`` count: the first epoch of
a run (empty null cache) and every later one (nulls cached); ``per_epoch_s`` spreads a 101-epoch run's first
epoch over its epochs. Then the same probes with four more 64-d layers (Conv-4's blocks), and one probe of 1,000
classes x 20 images at d = 64 (more classes than dimensions): one evaluation of every metric, the share of gnc2,
the null of its layout and the cost of one bootstrap replicate. ``--precision`` also measures the Monte Carlo
spread of the interval endpoints over 8 bootstrap seeds, relative to the interval width. Lines::

    RESULT bench=nc dim=64 bootstrap=200 first_epoch_s=... later_epoch_s=... per_epoch_s=...

Run: ``.venv/bin/python bench/bench_nc.py --blas-threads 1`` (as the nc stage runs; the thread count must be set
before numpy is imported, hence the late imports).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

DIMS = (64, 512)
EPOCHS = 101  # a paper-protocol run: epoch 0 and 100 trained epochs
# name: (kind, episodes, n_way, n_support, n_query, classes in the split)
PROBES = {
    "train_episodes": ("episodic", 20, 60, 5, 5, 4112),
    "val_episodes": ("episodic", 50, 5, 5, 15, 688),
    "train_classes": ("classes", 1, 60, 5, 15, 4112),
    "test_classes": ("classes", 1, 60, 5, 15, 1692),
}
LARGE_PROBE = {"train_classes_1000": ("classes", 1, 1000, 5, 15, 4112)}
CONV4_LAYERS = ("block1", "block2", "block3", "block4")


def synthetic_dump(dim: int, probes: dict = PROBES, layers: tuple[str, ...] = (), seed: int = 0) -> dict:
    """A feature dump: ReLU(class centre + noise), float32, rows in probe order; each extra layer a ReLU of a
    random projection of the embedding."""
    import numpy as np

    rng = np.random.default_rng(seed)
    feats, labels, probe, episode, role = [], [], [], [], []
    for p, (kind, episodes, n_way, n_sup, n_qry, n_classes) in enumerate(probes.values()):
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
    dump = {
        "features": np.concatenate(feats).astype(np.float32),
        "labels": np.concatenate(labels).astype(np.int64),
        "probe": np.concatenate(probe).astype(np.int64),
        "episode": np.concatenate(episode).astype(np.int64),
        "role": np.concatenate(role).astype(np.int8),
        "probe_names": np.array(list(probes)),
        "probe_kinds": np.array([v[0] for v in probes.values()]),
        "probe_bn_modes": np.array(["train" if v[0] == "episodic" else "eval" for v in probes.values()]),
        "probe_splits": np.array(["train"] * len(probes)),
        "epoch": np.array(1, dtype=np.int64),
        "meta": np.array(json.dumps(meta)),
    }
    if layers:
        dump["layer_names"] = np.array(layers)
        for name in layers:
            projection = rng.normal(size=(dim, dim)).astype(np.float32) / np.sqrt(dim)
            dump[f"features@{name}"] = np.maximum(dump["features"] @ projection, 0.0)
    return dump


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def epoch_times(dump: dict, bootstrap: int, repeats: int) -> tuple[float, float]:
    """(first epoch, later epoch) seconds of one dump's NC table."""
    from metacollapse.nc_table import epoch_nc_table

    first = best_of(repeats, lambda: epoch_nc_table(dump, null_cache={}, bootstrap=bootstrap))
    cache: dict = {}
    epoch_nc_table(dump, null_cache=cache, bootstrap=0)
    later = best_of(repeats, lambda: epoch_nc_table(dump, null_cache=cache, bootstrap=bootstrap))
    return first, later


def large_probe(repeats: int) -> str:
    """One probe of 1,000 classes x 20 images at d = 64: metrics, gnc2 share, null, one bootstrap replicate."""
    import numpy as np

    from metacollapse import nc, nc_table

    dump = synthetic_dump(64, LARGE_PROBE)
    rows = np.argsort(dump["labels"], kind="stable")
    h = dump["features"][rows].astype(np.float64)[None]
    counts = np.bincount(np.unique(dump["labels"][rows], return_inverse=True)[1])
    inv = np.repeat(np.arange(counts.shape[0]), counts)
    metrics_s = best_of(repeats, lambda: nc._feature_metrics(h, inv, counts, nc._EPS32))
    m = nc._centred_means(nc._class_means(h, counts))
    unit = m / np.sqrt(np.sum(m**2, axis=2))[:, :, None]
    cos_grid = np.matmul(unit, np.swapaxes(unit, 1, 2))  # computed by the kernel for the NC2 metrics anyway
    gnc2_s = best_of(repeats, lambda: np.var(-0.5 * np.log(nc._pair_sq_distances(unit, cos_grid)), axis=1))
    start = time.perf_counter()
    cache: dict = {}
    nc_table.epoch_nc_table(dump, null_cache=cache, bootstrap=0)
    null_s = time.perf_counter() - start
    replicates = 4
    later = best_of(repeats, lambda: nc_table.epoch_nc_table(dump, null_cache=cache, bootstrap=0))
    boot = best_of(repeats, lambda: nc_table.epoch_nc_table(dump, null_cache=cache, bootstrap=replicates))
    replicate_s = (boot - later) / replicates
    return (
        f"RESULT bench=nc_1000 classes=1000 images=20 dim=64 metrics_s={metrics_s:.3f} gnc2_s={gnc2_s:.3f} "
        f"null_s={null_s - later:.1f} later_epoch_s={later:.3f} replicate_s={replicate_s:.3f}"
    )


def precision(dim: int, counts: list[int], seeds: int = 8) -> list[str]:
    """Monte Carlo spread of the interval endpoints over bootstrap seeds, relative to the mean interval width."""
    import numpy as np

    from metacollapse.nc_table import epoch_nc_table

    dump, cache, lines = synthetic_dump(dim), {}, []
    epoch_nc_table(dump, null_cache=cache, bootstrap=0)
    for b in counts:
        tables = [epoch_nc_table(dump, null_cache=cache, bootstrap=b, bootstrap_seed=s) for s in range(seeds)]
        low = np.array([t["ci_low"].to_numpy() for t in tables])
        high = np.array([t["ci_high"].to_numpy() for t in tables])
        width = (high - low).mean(axis=0)
        keep = width > 0
        spread = np.maximum(low.std(axis=0), high.std(axis=0))[keep] / width[keep]
        classes = tables[0]["probe"].str.endswith("classes").to_numpy()[keep]
        lines.append(
            f"RESULT bench=nc_ci_precision dim={dim} bootstrap={b} "
            f"episodic_median={np.median(spread[~classes]):.3f} episodic_max={spread[~classes].max():.3f} "
            f"classes_median={np.median(spread[classes]):.3f} classes_max={spread[classes].max():.3f}"
        )
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--blas-threads", type=int, default=None, help="pin OpenBLAS/OMP/MKL thread counts")
    parser.add_argument(
        "--bootstrap", default=None, help="comma-separated replicate counts (default: 0 and the default)"
    )
    parser.add_argument("--precision", action="store_true", help="also measure the endpoints' Monte Carlo spread")
    parser.add_argument("--skip-large", action="store_true", help="skip the 1,000-class probe (about 3 minutes)")
    args = parser.parse_args()
    if args.blas_threads is not None:
        if "numpy" in sys.modules:
            raise RuntimeError("--blas-threads must be applied before numpy is imported")
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.blas_threads)

    from metacollapse.nc import NULL_MIN_DRAWS, NULL_SAMPLES
    from metacollapse.nc_table import BOOTSTRAP_REPLICATES

    counts = [0, BOOTSTRAP_REPLICATES] if args.bootstrap is None else [int(x) for x in args.bootstrap.split(",")]
    threads = os.environ.get("OPENBLAS_NUM_THREADS", "default")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"cpus={os.cpu_count()}  blas_threads={threads}  load_avg=({load})  best of {args.repeats}")
    print(f"null baselines: {NULL_SAMPLES} rows per layout, at least {NULL_MIN_DRAWS} draws")
    print(
        f"{'d':>4} {'N':>6} {'layers':>6} {'bootstrap':>9} {'first_epoch_s':>14} {'later_epoch_s':>14}"
        f" {'per_epoch_s':>12}"
    )
    results = []
    cases = [(dim, ()) for dim in DIMS] + [(64, CONV4_LAYERS)]
    for dim, layers in cases:
        dump = synthetic_dump(dim, layers=layers)
        for b in counts if not layers else counts[-1:]:
            first, later = epoch_times(dump, b, args.repeats)
            per_epoch = (first + (EPOCHS - 1) * later) / EPOCHS
            n = dump["features"].shape[0]
            print(f"{dim:>4} {n:>6} {1 + len(layers):>6} {b:>9} {first:>14.3f} {later:>14.3f} {per_epoch:>12.3f}")
            results.append(
                f"RESULT bench=nc dim={dim} layers={1 + len(layers)} bootstrap={b} first_epoch_s={first:.3f} "
                f"later_epoch_s={later:.3f} per_epoch_s={per_epoch:.3f}"
            )
    if args.precision:
        results += precision(64, counts[1:] or [BOOTSTRAP_REPLICATES])
    if not args.skip_large:
        results.append(large_probe(args.repeats))
    print("\n".join(results))


if __name__ == "__main__":
    main()
