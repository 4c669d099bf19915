"""The features stage of one checkpoint at the paper's probe sizes: fp32 dumps against bf16 ones.

Builds Omniglot-shaped processed splits (random strokes: the time does not depend on the pixels), the paper's
probes (60-way 5+5 x 20 training episodes in train mode, 5-way 5+15 x 50 validation episodes, and two 60-class
probes of 20 images each) and an untrained checkpoint per backbone, then times ``features_stage`` (best of
``--repeats``, paths alternating) with ``feature_precision`` ``fp32`` and with ``train`` in a bf16 run, and,
with ``--layers``, fp32 dumps of every block too. Wall time and the process's CPU time (less sensitive to other
processes on a shared machine) are both printed, one line per figure::

    RESULT bench=features backbone=conv4 path=fp32 images=19400 seconds=... cpu_seconds=... images_per_s=...

    python bench/bench_features.py [--backbones conv4 resnet18] [--repeats 2] [--layers]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from metacollapse.checkpoints import build_run_learner, save_weights
from metacollapse.device import resolve_precision
from metacollapse.features import features_stage, make_probes

SPLITS = {"train": 4112, "val": 688, "test": 1692}
PROBES = {
    "train_episodes": {"kind": "episodic", "split": "train", "n_way": 60, "n_support": 5, "n_query": 5, "episodes": 20},
    "val_episodes": {"kind": "episodic", "split": "val", "n_way": 5, "n_support": 5, "n_query": 15, "episodes": 50},
    "train_classes": {"kind": "classes", "split": "train", "classes": 60, "n_support": 5},
    "test_classes": {"kind": "classes", "split": "test", "classes": 60, "n_support": 5},
}
IMAGES = 60 * 10 * 20 + 5 * 20 * 50 + 2 * 60 * 20
BACKBONES = {"conv4": {"arch": "conv4", "width": 64}, "resnet18": {"arch": "resnet18"}}
# path: (run precision, feature_precision, layers)
PATHS = {"fp32": ("bf16", "fp32", None), "bf16": ("bf16", "train", None), "fp32_layers": ("bf16", "fp32", "all")}


def write_splits(folder: Path) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for split, classes in SPLITS.items():
        np.save(folder / f"{split}.npy", (rng.random((classes, 20, 28, 28)) < 0.2).astype(np.uint8))
        names = [f"Bench/character{c:02d}/rot000" for c in range(1, classes + 1)]
        (folder / f"{split}_classes.txt").write_text("\n".join(names) + "\n")


def run_spec(backbone: str) -> dict:
    episodes = {"n_way": 60, "n_support": 5, "n_query": 5}
    return {
        "name": f"bench-{backbone}",
        "learner": {"name": "protonet"},
        "backbone": BACKBONES[backbone],
        "seed": 0,
        "train": {"split": "train", **episodes, "episodes_per_epoch": 1, "epochs": 1, "lr": 1e-3},
        "val": {"split": "val", **episodes, "episodes": 1, "seed": 0},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per path (the best counts)")
    parser.add_argument("--layers", action="store_true", help="also time fp32 dumps of every block's output")
    args = parser.parse_args()
    cpu = torch.device("cpu")
    paths = [p for p in PATHS if args.layers or PATHS[p][2] is None]
    print(
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} "
        f"threads; bf16 {'with' if resolve_precision('auto', cpu) == 'bf16' else 'without'} matrix units; "
        f"{IMAGES} probe images per dump",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_splits(root / "processed")
        make_probes(PROBES, 0, root / "processed", root / "probes.npz")
        for backbone in args.backbones:
            spec = run_spec(backbone)
            torch.manual_seed(0)
            checkpoint = root / f"{backbone}.pt"
            save_weights(checkpoint, build_run_learner(spec, SPLITS["train"]), spec, 0, SPLITS["train"], cpu)
            best = dict.fromkeys(paths, float("inf"))
            best_cpu = dict.fromkeys(paths, float("inf"))
            for repeat in range(args.repeats):
                for path in paths if repeat % 2 == 0 else reversed(paths):
                    precision, feature_precision, layers = PATHS[path]
                    began, began_cpu = time.perf_counter(), time.process_time()
                    features_stage(
                        spec,
                        [checkpoint],
                        root / "probes.npz",
                        root / "processed",
                        [root / f"{backbone}-{path}.npz"],
                        device="cpu",
                        precision=precision,
                        layers=layers,
                        feature_precision=feature_precision,
                    )
                    best[path] = min(best[path], time.perf_counter() - began)
                    best_cpu[path] = min(best_cpu[path], time.process_time() - began_cpu)
            for path in paths:
                print(
                    f"RESULT bench=features backbone={backbone} path={path} images={IMAGES} "
                    f"seconds={best[path]:.2f} cpu_seconds={best_cpu[path]:.2f} images_per_s={IMAGES / best[path]:.0f}",
                    flush=True,
                )
            ratio, cpu_ratio = best["fp32"] / best["bf16"], best_cpu["fp32"] / best_cpu["bf16"]
            print(
                f"RESULT bench=features backbone={backbone} fp32_over_bf16={ratio:.2f} "
                f"cpu_fp32_over_bf16={cpu_ratio:.2f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
