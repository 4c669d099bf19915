"""Benchmark: NC metrics for one epoch of both backbones against the 5-second budget.

Builds synthetic feature dumps with the real probe sizes (docs/CONTRACTS.md layout) for Conv-4 (d=64) and
ResNet-18 (d=512), times ``metacollapse.nc.epoch_nc_table`` (best of 3) on each, and also the file-level path
``nc_table_for_file`` (npz load + table + atomic CSV write). Run: ``.venv/bin/python bench/bench_nc.py``
(``--blas-threads 1`` pins OpenBLAS to one thread; it must be set before numpy is imported, hence the
late imports). On a busy 2-core machine multi-threaded OpenBLAS can spin on these small matrices.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

BUDGET_S = 5.0
BACKBONES = {"conv4": 64, "resnet18": 512}
# name: (kind, episodes, n_way, n_support, n_query, classes in the split)
PROBES = {
    "train_episodes": ("episodic", 20, 60, 5, 5, 4112),
    "val_episodes": ("episodic", 20, 5, 5, 15, 688),
    "train_classes": ("classes", 1, 60, 5, 15, 4112),
    "test_classes": ("classes", 1, 60, 5, 15, 1692),
}


def synthetic_dump(dim: int, backbone: str, seed: int = 0) -> dict:
    """A feature dump of the real probe sizes: ReLU(class centre + noise), float32, rows in probe order."""
    import numpy as np

    rng = np.random.default_rng(seed)
    feats, labels, probe, episode, role = [], [], [], [], []
    for p, (kind, episodes, n_way, n_sup, n_qry, n_classes) in enumerate(PROBES.values()):
        centres = rng.normal(size=(n_classes, dim)).astype(np.float32)
        for ep in range(episodes):
            classes = rng.choice(n_classes, size=n_way, replace=False)
            per = n_sup + n_qry
            lab = np.repeat(classes, per)
            noise = 0.7 * rng.normal(size=(lab.size, dim)).astype(np.float32)
            feats.append(np.maximum(centres[lab] + noise, 0.0))
            labels.append(lab)
            probe.append(np.full(lab.size, p))
            episode.append(np.full(lab.size, ep if kind == "episodic" else 0))
            role.append(np.tile(np.r_[np.zeros(n_sup), np.ones(n_qry)], n_way))
    return {
        "features": np.concatenate(feats).astype(np.float32),
        "labels": np.concatenate(labels).astype(np.int64),
        "probe": np.concatenate(probe).astype(np.int64),
        "episode": np.concatenate(episode).astype(np.int64),
        "role": np.concatenate(role).astype(np.int8),
        "probe_names": np.array(list(PROBES)),
        "probe_kinds": np.array([v[0] for v in PROBES.values()]),
        "epoch": np.array(1, dtype=np.int64),
        "backbone": np.array(backbone),
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
    import numpy as np

    from metacollapse.nc import epoch_nc_table, nc_table_for_file

    threads = os.environ.get("OPENBLAS_NUM_THREADS", "default")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"cpus={os.cpu_count()}  blas_threads={threads}  load_avg=({load})  best of {args.repeats}")
    total_table = total_file = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for backbone, dim in BACKBONES.items():
            dump = synthetic_dump(dim, backbone)
            npz = Path(tmp) / f"{backbone}.npz"
            np.savez(npz, **dump)
            t_table = best_of(args.repeats, lambda dump=dump: epoch_nc_table(dump))
            t_file = best_of(args.repeats, lambda npz=npz: nc_table_for_file(npz, Path(tmp) / "nc.csv"))
            rows = len(epoch_nc_table(dump))
            total_table += t_table
            total_file += t_file
            print(
                f"{backbone:9s} d={dim:3d}  N={dump['features'].shape[0]:5d}  rows={rows}  "
                f"epoch_nc_table {t_table:.3f}s  nc_table_for_file {t_file:.3f}s"
            )
    share = total_table / BUDGET_S
    print(f"total epoch_nc_table {total_table:.3f}s  = {share:.1%} of the {BUDGET_S:.0f}s budget")
    print(f"total nc_table_for_file {total_file:.3f}s  = {total_file / BUDGET_S:.1%} of the budget")


if __name__ == "__main__":
    main()
