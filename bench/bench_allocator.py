"""Training throughput with freed memory kept for reuse (what the stages do) and with glibc's default malloc.

The allocator is set per process, so every measurement is one worker process: one path (fp32 or the default
precision), one backbone, one allocator setting, a warm-up, then timed training episodes on the device-resident
split, exactly as ``bench/bench_training.py`` times them. Workers alternate settings within each round and the
order flips every round. Printed: every round, the medians, each path's speedup from keeping memory, its peak RSS,
and the default path (memory kept) against the fp32 path with glibc's default, the way the stages ran before.
Each figure is also a ``RESULT key=value ...`` line (single rounds carry a ``round`` key).

    python bench/bench_allocator.py --mirror ../shared/data/omniglot [--backbones resnet18] [--episodes 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from bench_training import REPO, Runner, Sources, episodes_per_s, peak_memory_mib, prepare_data, result

from metacollapse.device import keep_freed_memory, resolve_precision
from metacollapse.episodes import EpisodeSpec, split_to_device

SETTINGS = ("keep", "system")


def worker(args) -> None:
    """One measurement: prints ``episodes_per_s peak_mib`` for ``args.path`` of ``args.backbone``."""
    if args.malloc == "keep" and not keep_freed_memory():
        raise SystemExit("this C library cannot keep freed memory (glibc on Linux only)")
    device = torch.device("cpu")
    precision = "fp32" if args.path == "fp32" else resolve_precision("auto", device)
    spec = EpisodeSpec(args.n_way, 5, 5)
    split = split_to_device(np.load(args.split), device)
    runner = Runner(args.path, args.backbone, device, precision, compile_model=False)
    sources = Sources(split, [], spec, device)
    for _ in range(args.warmup):
        runner.train_step(*sources.resident(), spec.n_way)
    rate, _ = episodes_per_s(runner, sources.resident, spec, args.episodes)
    print(rate, peak_memory_mib(device))


def measure(args, split: Path, backbone: str, path: str, malloc: str) -> tuple[float, float]:
    command = [sys.executable, __file__, "--worker", "--split", str(split), "--backbone", backbone, "--path", path]
    command += ["--malloc", malloc, "--episodes", str(args.episodes), "--warmup", str(args.warmup)]
    command += ["--n-way", str(args.n_way)]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout.split()
    return float(out[-2]), float(out[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mirror", default=str(REPO.parent / "shared" / "data" / "omniglot"))
    parser.add_argument("--backbones", nargs="+", default=["conv4", "resnet18"])
    parser.add_argument("--episodes", type=int, default=3, help="timed training episodes per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (medians are over these)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed training episodes first, in each worker")
    parser.add_argument("--n-way", type=int, default=60)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--split", help=argparse.SUPPRESS)
    parser.add_argument("--backbone", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--malloc", choices=SETTINGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return 0
    default = resolve_precision("auto", torch.device("cpu"))
    print(
        f"{os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads; default path "
        f"{default}; {args.n_way}-way 5-shot 5-query; {args.rounds} rounds x {args.episodes} episodes per worker",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        prepare_data(Path(tmp), args.mirror, need_png=False)
        split = Path(tmp) / "processed" / "train.npy"
        for backbone in args.backbones:
            cases = list(itertools.product(("fp32", "default"), SETTINGS))
            rates = {case: [] for case in cases}
            peaks = {case: 0.0 for case in cases}
            for r in range(1, args.rounds + 1):
                for path, malloc in cases if r % 2 else reversed(cases):
                    rate, peak = measure(args, split, backbone, path, malloc)
                    rates[path, malloc].append(rate)
                    peaks[path, malloc] = max(peaks[path, malloc], peak)
                    result(bench="allocator", backbone=backbone, path=path, malloc=malloc, round=r, episodes_per_s=rate)
            med = {case: statistics.median(v) for case, v in rates.items()}
            print(f"\n{backbone}: training episodes/s per round, median, peak RSS")
            for path, malloc in cases:
                rounds = " ".join(f"{v:6.3f}" for v in rates[path, malloc])
                median, peak = med[path, malloc], peaks[path, malloc]
                print(f"  {path:<8} {malloc:<7} {rounds}   median {median:6.3f}   peak {peak:6.0f} MiB")
                result(
                    bench="allocator", backbone=backbone, path=path, malloc=malloc,
                    episodes_per_s=med[path, malloc], peak_mib=peaks[path, malloc],
                )  # fmt: skip
            ratios = {
                "ratio_keep_vs_system_fp32": med["fp32", "keep"] / med["fp32", "system"],
                "ratio_keep_vs_system_default": med["default", "keep"] / med["default", "system"],
                "ratio_default_vs_fp32_keep": med["default", "keep"] / med["fp32", "keep"],
                "ratio_default_vs_fp32_system": med["default", "system"] / med["fp32", "system"],
                "ratio_default_keep_vs_fp32_system": med["default", "keep"] / med["fp32", "system"],
            }
            result(bench="allocator", backbone=backbone, **ratios)
            print(f"{backbone}: " + ", ".join(f"{k.removeprefix('ratio_')} {v:.2f}x" for k, v in ratios.items()) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
