"""Per-epoch feature stages against training: does dumping features dominate the pipeline?

The workflow runs one `dump_features` job and one `nc_metrics` job per (backbone, epoch): 200 of each in the paper
protocol. Each is a fresh process, as Snakemake starts it. This script measures, in one run and per backbone:
  1. one paper-protocol training epoch (100 episodes 60-way 5-shot 5-query, then the 100 validation episodes),
     from a real `train` run of a few episodes per epoch, timed on its second epoch (after warm-up);
  2. one dump job (`python -m metacollapse.cli dump-features`, the paper's probe sets, ~19k images) from process
     start to exit, and the part of it that is embedding (the same call in this process, warm);
  3. J dump jobs started at once on the same device (the workstation profile lets dumps share the GPU), whose
     wall time / J is the effective cost of one dump;
  4. one `nc` job (CPU, float64, one BLAS thread as in the workflow).
It prints the dumps' share of the pipeline, serial and shared: 100 epochs x (dump or dump/J) against 100 x
the training epoch.

    python bench/bench_features.py --mirror ../shared/data/omniglot                       # CPU, conv4
    python bench/bench_features.py --device cuda --backbones conv4 resnet18 --jobs 6      # GPU
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from metacollapse.data import download_omniglot, prepare_splits
from metacollapse.features import dump_features, make_probes
from metacollapse.training import TrainParams, train

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, threads: int) -> list[str]:
    return [sys.executable, "-m", "metacollapse.cli", *args, "--threads", str(threads)]


def wall(commands: list[list[str]], env: dict[str, str]) -> float:
    """Seconds from starting every command at once until the last one exits (each must succeed)."""
    began = time.perf_counter()
    procs = [
        subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for command in commands
    ]
    for proc, command in zip(procs, commands, strict=True):
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({proc.returncode}):\n{err[-2000:]}")
    return time.perf_counter() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mirror", default=str(REPO.parent / "shared" / "data" / "omniglot"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backbones", nargs="+", default=["conv4"])
    parser.add_argument("--train-episodes", type=int, default=10, help="episodes per timed training epoch")
    parser.add_argument("--jobs", type=int, default=None, help="dump jobs at once (default: 1 on CPU, 6 on GPU)")
    parser.add_argument("--repeats", type=int, default=3, help="serial dump jobs timed (median)")
    parser.add_argument("--threads", type=int, default=2, help="threads per dump job, as the workflow gives it")
    args = parser.parse_args()
    jobs = args.jobs or (6 if args.device.startswith("cuda") else 1)
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": str(args.threads)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH", "")]))

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        download_omniglot(tmp / "raw", args.mirror)
        prepare_splits(tmp / "raw", REPO / "data" / "splits" / "vinyals", tmp / "processed", ["train", "val", "test"])
        data = tmp / "processed"
        probes = tmp / "probes.npz"
        make_probes(config["features"]["probes"], config["features"]["seed"], data, probes)
        name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"CPU x{os.cpu_count()}"
        print(f"device: {args.device} ({name}); dump jobs: {args.threads} threads each, {jobs} at once")
        print(
            f"{'backbone':<10} {'train epoch s':>13} {'dump job s':>10} {'embed s':>8} {'dump/J s':>9} "
            f"{'nc job s':>8} {'dumps/train serial':>19} {'shared':>7}"
        )
        for backbone in args.backbones:
            spec = {
                "backbone": config["backbones"][backbone],
                "seed": 0,
                "train": {**config["train"], "epochs": 2, "episodes_per_epoch": args.train_episodes},
                "val": config["val"],
            }
            run = tmp / backbone
            log = train(TrainParams.from_dict(spec), data, run, args.device, progress=False)
            second = log.iloc[-1]
            train_seconds = args.train_episodes / second["episodes_per_s"]
            val_seconds = second["seconds"] - train_seconds
            epoch_seconds = config["train"]["episodes_per_epoch"] / second["episodes_per_s"] + val_seconds
            checkpoint = run / "checkpoints" / "epoch_002.pt"

            def dump_command(out: Path, checkpoint: Path = checkpoint, backbone: str = backbone) -> list[str]:
                return cli(
                    "dump-features", "--backbone", backbone, "--checkpoint", str(checkpoint), "--probes", str(probes),
                    "--data-dir", str(data), "--out", str(out), "--device", args.device, threads=args.threads,
                )  # fmt: skip

            serial = statistics.median(
                wall([dump_command(tmp / f"{backbone}_serial{i}.npz")], env) for i in range(args.repeats)
            )
            torch.set_num_threads(args.threads)
            dump_features(checkpoint, probes, data, tmp / "warm.npz", backbone, args.device)  # warm-up
            began = time.perf_counter()
            dump_features(checkpoint, probes, data, tmp / "warm.npz", backbone, args.device)
            embed = time.perf_counter() - began
            shared = wall([dump_command(tmp / f"{backbone}_shared{i}.npz") for i in range(jobs)], env) / jobs
            features = tmp / f"{backbone}_serial0.npz"
            nc_command = [sys.executable, "-m", "metacollapse.cli", "nc", "--features", str(features)]
            nc = wall([[*nc_command, "--out", str(tmp / "nc.csv")]], env)
            print(
                f"{backbone:<10} {epoch_seconds:>13.2f} {serial:>10.2f} {embed:>8.2f} {shared:>9.2f} {nc:>8.2f} "
                f"{serial / epoch_seconds:>18.0%} {shared / epoch_seconds:>7.0%}"
            )
            print(f"  {json.dumps({k: round(float(v), 4) for k, v in second.items()})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
