"""Several trainings on one device: aggregate training episodes/s of N runs as N processes against one run alone.

Every run is one worker process set up as the training stage sets up a run: the split resident on the device,
the learner in ``precision`` (``auto`` as the pipeline resolves it), Adam, and :class:`metacollapse.step.Stepper`
in the chosen ``compile`` mode (``auto``: a CUDA graph on GPUs, eager on CPU). Each worker takes ``--warmup``
untimed steps (a graph is captured in them), waits until every worker of the measurement is ready, then times
``--episodes`` steps. ``alone`` is one worker with every CPU thread (``--threads``, default all cores); ``processes``
is N workers started together, the threads divided among them (``threads // N`` each, at least 1). The aggregate
rate is N x episodes over the span from the first worker's start to the last one's end. Printed as
``RESULT bench=study ... runs=N mode=alone|processes ... episodes_per_s=...`` lines, then the ratio of each
aggregate to the first run alone. Several ``--compile`` modes and ``--precision`` values are each measured alone
(with their ratio to the first); processes use the first of each. ``--rounds`` repeats every measurement, the
order flipping every round, and adds the medians (single rounds carry a ``round`` key).

    python bench/bench_study.py --device cpu --runs 2 --episodes 3
    python bench/bench_study.py --device cuda --runs 2 4 --episodes 300 --compile graph none reduce-overhead \
        --precision bf16 fp32
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import queue
import re
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from bench_training import REPO, prepare_data, result

READY_TIMEOUT_S = 900.0


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def worker(job: dict, ready, results) -> None:
    """One run: set up, warm up, wait for the others, time ``job['episodes']`` steps; report to ``results``."""
    try:
        from metacollapse.checkpoints import build_run_learner
        from metacollapse.device import setup
        from metacollapse.episodes import EpisodeSpec, sample_batch_indices, sample_episode_indices, split_to_device
        from metacollapse.step import Stepper

        arch = job["spec"]["backbone"]["arch"]
        runtime = setup(job["device"], job["precision"], arch=arch, threads=job["threads"], compile=job["compile"])
        device = runtime.device
        split = split_to_device(np.load(job["split"]), device)
        n_classes, per_class = split.shape[:2]
        torch.manual_seed(job["seed"])
        learner = runtime.place(build_run_learner(job["spec"], n_classes))
        optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
        spec = EpisodeSpec(job["n_way"], job["n_support"], job["n_query"])
        stepper = Stepper(learner, optimizer, split, spec if learner.episodic else job["batch_size"], 1, job["compile"])
        generator = torch.Generator(device=device).manual_seed(job["seed"])
        steps = job["warmup"] + job["episodes"]
        if learner.episodic:
            drawn = sample_episode_indices(n_classes, per_class, spec, steps, generator)
            indices = [(drawn.classes[s : s + 1], drawn.images[s : s + 1]) for s in range(steps)]
        else:
            classes, images = sample_batch_indices(
                torch.arange(n_classes, device=device), per_class, job["batch_size"], steps, generator
            )
            indices = list(zip(classes, images, strict=True))
        learner.train()
        for s in range(job["warmup"]):
            stepper.step(*indices[s])
        synchronize(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        ready.wait(timeout=READY_TIMEOUT_S)
        began = time.perf_counter()  # CLOCK_MONOTONIC: one clock for every process of the machine
        for s in range(job["warmup"], steps):
            stepper.step(*indices[s])
        loss = float(stepper.totals()[0])  # waits for the device
        ended = time.perf_counter()
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
        results.put(
            {
                "began": began,
                "ended": ended,
                "mode": stepper.mode,
                "precision": runtime.precision,
                "loss": loss,
                "peak_mib": peak,
            }
        )
    except BaseException:
        ready.abort()
        results.put({"error": traceback.format_exc()})


def measure(job: dict, runs: int, threads: int) -> dict:
    """Start ``runs`` workers of ``job`` with ``threads`` each; the aggregate and slowest rate over their windows."""
    context = mp.get_context("spawn")
    ready, results = context.Barrier(runs), context.Queue()
    job = {**job, "threads": threads}
    workers = [
        context.Process(target=worker, args=({**job, "seed": job["seed"] + i}, ready, results)) for i in range(runs)
    ]
    for process in workers:
        process.start()
    reports = []
    while len(reports) < runs:
        try:
            reports.append(results.get(timeout=5))
        except queue.Empty:
            if all(not p.is_alive() for p in workers) and results.empty():
                codes = [p.exitcode for p in workers]
                raise RuntimeError(f"workers ended without a report (exit codes {codes})") from None
    for process in workers:
        process.join()
    errors = [r["error"] for r in reports if "error" in r]
    if errors:
        raise RuntimeError(f"a worker failed:\n{errors[0]}")
    span = max(r["ended"] for r in reports) - min(r["began"] for r in reports)
    return {
        "episodes_per_s": runs * job["episodes"] / span,
        "slowest": min(job["episodes"] / (r["ended"] - r["began"]) for r in reports),
        "compile_used": reports[0]["mode"],
        "precision": reports[0]["precision"],
        "peak_mib": max(r["peak_mib"] for r in reports),
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        found = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        return found.group(1) if found else platform.processor() or "CPU"
    except OSError:
        return platform.processor() or "CPU"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--mirror", default=str(REPO.parent / "shared" / "data" / "omniglot"))
    parser.add_argument("--data-dir", type=Path, default=None, help="a processed folder with train.npy (else made)")
    parser.add_argument("--runs", type=int, nargs="+", default=[2], help="runs side by side (one measurement each)")
    parser.add_argument("--episodes", type=int, default=3, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per run first (default 5 CUDA, 3 CPU)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of every measurement (medians over them)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads in all, divided among runs")
    parser.add_argument("--compile", nargs="+", default=["auto"], choices=["auto", "none", "graph", "reduce-overhead"])
    parser.add_argument("--precision", nargs="+", default=["auto"], choices=["auto", "fp32", "bf16"])
    parser.add_argument("--learner", default="protonet")
    parser.add_argument("--backbone", default="conv4")
    parser.add_argument("--width", type=int, default=None, help="backbone width (default: the backbone's)")
    parser.add_argument("--n-way", type=int, default=60)
    parser.add_argument("--n-support", type=int, default=5)
    parser.add_argument("--n-query", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=300, help="images per step of a non-episodic learner")
    args = parser.parse_args()
    device = torch.device(args.device)
    warmup = args.warmup if args.warmup is not None else (5 if device.type == "cuda" else 3)
    backbone = {"arch": args.backbone, **({"width": args.width} if args.width else {})}
    print(
        f"device {device} ({device_name(device)}), {os.cpu_count()} CPUs, torch {torch.__version__}; "
        f"{args.learner} on {backbone}, {args.n_way}-way {args.n_support}-shot {args.n_query}-query; "
        f"{warmup} warm-up + {args.episodes} timed steps per run; load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        if args.data_dir is None:
            array, _ = prepare_data(Path(tmp), args.mirror, need_png=False)
        else:
            array = np.load(args.data_dir / "train.npy")
        split = Path(tmp) / "train.npy"
        np.save(split, array)
        job = {
            "device": args.device, "split": str(split), "seed": 0, "warmup": warmup, "episodes": args.episodes,
            "spec": {"learner": {"name": args.learner}, "backbone": backbone},
            "n_way": args.n_way, "n_support": args.n_support, "n_query": args.n_query, "batch_size": args.batch_size,
        }  # fmt: skip
        common = {"bench": "study", "device": device.type, "backbone": args.backbone, "learner": args.learner}
        # Alone: every compile mode x precision; side by side: the first of each.
        plan = [("alone", mode, prec, 1, args.threads) for prec in args.precision for mode in args.compile]
        first = (args.compile[0], args.precision[0])
        plan += [("processes", *first, runs, max(1, args.threads // runs)) for runs in args.runs]
        rates = {key: [] for key in plan}
        for r in range(1, args.rounds + 1):
            for key in plan if r % 2 else reversed(plan):  # the order flips every round, so load drift hits all
                kind, mode, prec, runs, threads = key
                got = measure({**job, "compile": mode, "precision": prec}, runs, threads)
                rates[key].append(got)
                result(**common, compile=got["compile_used"], precision=got["precision"], runs=runs, mode=kind,
                       threads_per_run=threads, round=r, episodes_per_s=got["episodes_per_s"],
                       slowest_run_episodes_per_s=got["slowest"], peak_mib=got["peak_mib"])  # fmt: skip
        median = {key: statistics.median(g["episodes_per_s"] for g in got) for key, got in rates.items()}
        labels = {
            key: {"compile": got[0]["compile_used"], "precision": got[0]["precision"]} for key, got in rates.items()
        }
        for key, got in rates.items():
            kind, mode, prec, runs, threads = key
            result(**common, **labels[key], runs=runs, mode=kind, threads_per_run=threads, episodes_per_s=median[key],
                   slowest_run_episodes_per_s=statistics.median(g["slowest"] for g in got),
                   peak_mib=max(g["peak_mib"] for g in got))  # fmt: skip
        alone = median[plan[0]]
        for key in plan:
            kind, mode, prec, runs, threads = key
            if kind == "processes":
                result(**common, **labels[key], runs=runs, ratio_processes_vs_alone=median[key] / alone)
            elif key != plan[0]:
                result(**common, **labels[key], runs=1, ratio_vs_first_alone=median[key] / alone)
    print(f"load average at the end {os.getloadavg()[0]:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
