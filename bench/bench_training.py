"""Training and embedding throughput: the default precision path against fp32 and a per-episode PNG pipeline.

Measured in one run and printed together, per backbone:
  1. episodes/s of a full training step (forward, loss, backward, Adam; 60-way 5-shot 5-query) with the split
     resident on the device as uint8 and episodes drawn by indexing, in fp32 and in the default path
     (``precision: auto``: bf16 autocast with channels-last on CPUs with AMX bf16 and on bf16 GPUs, else fp32);
  2. where the default path swaps in matrix-product convolutions (ResNet-18 in bf16 on AMX CPUs,
     :mod:`metacollapse.matmul_conv`), the same path with oneDNN's convolutions everywhere (``onednn``);
  3. for Conv-4, a baseline in the style of the original Prototypical Networks loader and of the popular
     orobix/prototypical-networks-for-few-shot-learning re-implementation: every episode's 600 images are opened
     from PNG files with PIL, rotated, resized, inverted and stacked in Python, then trained on in fp32;
  4. peak memory of each path in its warm-up (process peak RSS, reset before the path after handing the memory kept
     by earlier paths back to the kernel, on CPU; allocator peak on CUDA);
  5. feature-embedding throughput (images/s, eval mode, no grad, batches of 1024) in both precisions;
  6. the share of a default-path training step spent drawing and gathering the episode;
  7. the device's matrix-product throughput in bf16 and fp32 (2048 x 2048 products): the ceiling on what bf16 can
     gain over fp32 in steps that are all convolution.
The process keeps freed memory for reuse, as the pipeline's stages do (``--malloc system`` leaves glibc's default;
``bench/bench_allocator.py`` compares the two).
Paths alternate within each round (the order flips every round) so that drift in machine load hits them alike;
every round is printed, then the medians and the ratios of medians. Each figure also appears as one
``RESULT key=value ...`` line; lines with a ``round`` key are single rounds, lines without it are medians.

    python bench/bench_training.py --mirror ../shared/data/omniglot [--backbones conv4] [--episodes 5] [--rounds 3]
    python bench/bench_training.py --device cuda --episodes 50
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import platform
import random
import re
import resource
import statistics
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from metacollapse.data import load_split, prepare_splits
from metacollapse.device import autocast, keep_freed_memory, prepare_model, resolve_precision, to_input
from metacollapse.download import download_omniglot
from metacollapse.episodes import EpisodeSpec, gather_episode, sample_episode_indices, split_to_device
from metacollapse.matmul_conv import MatmulConv2d
from metacollapse.models import build_backbone
from metacollapse.protonet import episode_loss

REPO = Path(__file__).resolve().parents[1]
EMBED_BATCH = 1024


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak: CUDA allocator stats, or the kernel's RSS high-water mark (Linux ``clear_refs`` 5)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(AttributeError):  # glibc: first hand back the memory earlier paths kept
        ctypes.CDLL(None).malloc_trim(0)
    with contextlib.suppress(OSError):  # without it, peak_memory_mib reads the process-lifetime maximum
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        status = Path("/proc/self/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024
    except (OSError, AttributeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Runner:
    """One way of running the network: a model in its precision and layout, with its own Adam state."""

    def __init__(
        self, name: str, backbone: str, device: torch.device, precision: str, compile_model: bool, matmul: bool = True
    ) -> None:
        self.name, self.device, self.precision = name, device, precision
        torch.manual_seed(0)  # every path starts from the same weights
        self.model = prepare_model(build_backbone({"arch": backbone}), device, precision, matmul_convolutions=matmul)
        self.matmul_convs = sum(type(m) is MatmulConv2d for m in self.model.modules())
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.forward = torch.compile(self.model) if compile_model else self.model

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """As the pipeline's learners embed: backbone under autocast in the path's layout, output cast to fp32."""
        with autocast(self.device, self.precision):
            return self.forward(to_input(images, self.precision)).float()

    def train_step(self, support: torch.Tensor, query: torch.Tensor, n_way: int) -> torch.Tensor:
        self.model.train()
        embeddings = self.embed(torch.cat([support, query], dim=0))
        loss, _ = episode_loss(embeddings[: support.shape[0]], embeddings[support.shape[0] :], n_way)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss


def load_png_episode(class_dirs, spec: EpisodeSpec, rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
    """The original loader's work per episode: PIL open, rotate, resize to 28x28, to float, invert."""
    chosen = rng.sample(class_dirs, spec.n_way)
    batch = []
    for folder, rotation in chosen:
        files = rng.sample(sorted(folder.iterdir()), spec.n_support + spec.n_query)
        for path in files:
            with Image.open(path) as image:
                image = image.rotate(rotation).resize((28, 28))
                batch.append(1.0 - torch.from_numpy(np.array(image, np.float32, copy=True)))
    images = torch.stack(batch).view(spec.n_way, spec.n_support + spec.n_query, 1, 28, 28)
    support = images[:, : spec.n_support].reshape(-1, 1, 28, 28)
    query = images[:, spec.n_support :].reshape(-1, 1, 28, 28)
    return support, query


class Sources:
    """Episode streams: indices into the device-resident split, and the PNG baseline's files."""

    def __init__(self, split: torch.Tensor, class_dirs, spec: EpisodeSpec, device: torch.device) -> None:
        self.split, self.class_dirs, self.spec = split, class_dirs, spec
        self.generator = torch.Generator(device=device).manual_seed(0)
        self.rng = random.Random(0)

    def resident(self) -> tuple[torch.Tensor, torch.Tensor]:
        indices = sample_episode_indices(self.split.shape[0], self.split.shape[1], self.spec, 1, self.generator)
        return gather_episode(self.split, indices, self.spec)

    def png(self) -> tuple[torch.Tensor, torch.Tensor]:
        support, query = load_png_episode(self.class_dirs, self.spec, self.rng)
        return support.to(self.split.device), query.to(self.split.device)


def episodes_per_s(runner: Runner, draw: Callable, spec: EpisodeSpec, episodes: int) -> tuple[float, float]:
    """Episodes per second of ``episodes`` training steps, and the seconds of them spent in ``draw``."""
    synchronize(runner.device)
    drawing = 0.0
    began = time.perf_counter()
    for _ in range(episodes):
        start = time.perf_counter()
        support, query = draw()
        drawing += time.perf_counter() - start
        runner.train_step(support, query, spec.n_way)
    synchronize(runner.device)
    return episodes / (time.perf_counter() - began), drawing


@torch.no_grad()
def images_per_s(runner: Runner, images: torch.Tensor) -> float:
    runner.model.eval()
    synchronize(runner.device)
    began = time.perf_counter()
    for i in range(0, images.shape[0], EMBED_BATCH):
        runner.embed(images[i : i + EMBED_BATCH].to(torch.float32).unsqueeze(1))
    synchronize(runner.device)
    return images.shape[0] / (time.perf_counter() - began)


def matmul_tflops(device: torch.device, dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    a @ b
    synchronize(device)
    began = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * n**3 * repeats / (time.perf_counter() - began) / 1e12


def result(**fields) -> None:
    text = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
    print(f"RESULT {text}", flush=True)


def prepare_data(tmp: Path, mirror: str, need_png: bool):
    download_omniglot(tmp / "raw", mirror)
    prepare_splits(tmp / "raw", REPO / "data" / "splits" / "vinyals", tmp / "processed", ["train"])
    array, names = load_split(tmp / "processed", "train")
    class_dirs = []
    if need_png:  # the baseline reads PNG files from disk, as the original code did
        for archive in ("images_background", "images_evaluation"):
            with zipfile.ZipFile(tmp / "raw" / f"{archive}.zip") as zf:
                zf.extractall(tmp / "png")
        roots = [tmp / "png" / "images_background", tmp / "png" / "images_evaluation"]
        for name in names:
            alphabet, character, rot = name.split("/")
            folder = next(r / alphabet / character for r in roots if (r / alphabet / character).is_dir())
            class_dirs.append((folder, int(rot[3:])))
    return array, class_dirs


def bench_backbone(backbone: str, args, device: torch.device, default: str, split, class_dirs) -> None:
    spec = EpisodeSpec(args.n_way, 5, 5)
    runners = {
        "fp32": Runner("fp32", backbone, device, "fp32", compile_model=False),
        "default": Runner("default", backbone, device, default, compile_model=args.compile),
    }
    sources = Sources(split, class_dirs, spec, device)
    draws = {"fp32": sources.resident, "default": sources.resident}
    if runners["default"].matmul_convs:  # the default path without matrix-product convolutions, for their effect
        runners["onednn"] = Runner("onednn", backbone, device, default, compile_model=args.compile, matmul=False)
        draws["onednn"] = sources.resident
    if backbone == "conv4" and class_dirs:
        runners["baseline"] = Runner("baseline", backbone, device, "fp32", compile_model=False)
        draws["baseline"] = sources.png
    images = split[: -(-args.embed_images // split.shape[1])].reshape(-1, *split.shape[2:])[: args.embed_images]

    warm = {}
    peaks = {}
    for name, runner in runners.items():  # warm-up (allocator, oneDNN primitives, cuDNN autotuning, compilation)
        reset_peak_memory(device)
        began = time.perf_counter()
        for _ in range(args.warmup):
            runner.train_step(*draws[name](), spec.n_way)
        synchronize(device)
        warm[name] = time.perf_counter() - began
        peaks[name] = peak_memory_mib(device)
        result(bench="training", backbone=backbone, path=name, warmup_s=warm[name], warmup_episodes=args.warmup)

    training = {name: [] for name in runners}
    embedding = {name: [] for name in ("fp32", "default")}
    default_seconds, default_drawing = 0.0, 0.0
    for r in range(1, args.rounds + 1):
        order = list(runners) if r % 2 else list(reversed(runners))
        for name in order:
            rate, drawing = episodes_per_s(runners[name], draws[name], spec, args.episodes)
            if name == "default":
                default_seconds += args.episodes / rate
                default_drawing += drawing
            training[name].append(rate)
            result(bench="training", backbone=backbone, path=name, round=r, episodes_per_s=rate)
        for name in order:
            if name in embedding:
                rate = images_per_s(runners[name], images)
                embedding[name].append(rate)
                result(bench="embedding", backbone=backbone, path=name, round=r, images_per_s=rate)

    med = {name: statistics.median(v) for name, v in training.items()}
    emb = {name: statistics.median(v) for name, v in embedding.items()}
    for name in runners:
        result(bench="training", backbone=backbone, path=name, episodes_per_s=med[name], peak_mib=peaks[name])
    for name in embedding:
        result(bench="embedding", backbone=backbone, path=name, images_per_s=emb[name])
    ratios = {"ratio_default_vs_fp32": med["default"] / med["fp32"]}
    if "baseline" in med:
        ratios["ratio_default_vs_baseline"] = med["default"] / med["baseline"]
    if "onednn" in med:
        ratios["ratio_default_vs_onednn"] = med["default"] / med["onednn"]
        ratios["ratio_onednn_vs_fp32"] = med["onednn"] / med["fp32"]
    result(bench="training", backbone=backbone, **ratios)
    result(bench="embedding", backbone=backbone, ratio_default_vs_fp32=emb["default"] / emb["fp32"])
    result(bench="training", backbone=backbone, path="default", sampling_share=default_drawing / default_seconds)

    print(f"\n{backbone}: training episodes/s per round ({args.episodes} episodes each), median, peak memory")
    for name in runners:
        label = f"{name} ({default})" if name == "default" else name
        rounds = " ".join(f"{v:6.3f}" for v in training[name])
        print(f"  {label:<16} {rounds}   median {med[name]:6.3f}   peak {peaks[name]:7.0f} MiB")
    print(f"{backbone}: embedding images/s per round ({images.shape[0]} images, batches of {EMBED_BATCH}), median")
    for name in embedding:
        label = f"{name} ({default})" if name == "default" else name
        rounds = " ".join(f"{v:7.0f}" for v in embedding[name])
        print(f"  {label:<16} {rounds}   median {emb[name]:7.0f}")
    summary = ", ".join(f"{k.removeprefix('ratio_')} {v:.2f}x" for k, v in ratios.items())
    print(
        f"{backbone}: {summary}; embedding default_vs_fp32 {emb['default'] / emb['fp32']:.2f}x; episode draw+gather "
        f"{100 * default_drawing / default_seconds:.2f}% of a default-path step\n",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mirror", default=str(REPO.parent / "shared" / "data" / "omniglot"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backbones", nargs="+", default=["conv4", "resnet18"])
    parser.add_argument("--episodes", type=int, default=5, help="timed training episodes per path and round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (medians are over these)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed training episodes per path first")
    parser.add_argument("--embed-images", type=int, default=8192, help="images embedded per path and round")
    parser.add_argument("--n-way", type=int, default=60)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"], help="the default path")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--compile", action="store_true", help="experiment: torch.compile the default path")
    parser.add_argument("--no-baseline", action="store_true", help="skip the PNG baseline (and extracting PNGs)")
    parser.add_argument(
        "--malloc", default="keep", choices=["keep", "system"], help="keep freed memory (as the stages do) or not"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.malloc == "keep" and device.type == "cpu" and not keep_freed_memory():
        print("note: this C library cannot keep freed memory; running with its default", flush=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    default = {backbone: resolve_precision(args.precision, device, backbone) for backbone in args.backbones}

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    if device.type == "cpu":
        try:
            model_name = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
            name = model_name.group(1) if model_name else name
        except OSError:
            pass
    print(
        f"device {device} ({name}), {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} "
        f"threads; default path precision={args.precision} -> {default} (bf16 with channels-last)"
        f"{' + torch.compile' if args.compile else ''}; "
        f"{args.n_way}-way 5-shot 5-query; {args.rounds} rounds x {args.episodes} episodes",
        flush=True,
    )
    precisions = ",".join(f"{backbone}:{precision}" for backbone, precision in default.items())
    result(
        bench="setup", device=device.type, threads=torch.get_num_threads(), default_precision=precisions,
        compile=int(args.compile), episodes=args.episodes, rounds=args.rounds, n_way=args.n_way, malloc=args.malloc,
    )  # fmt: skip
    ceiling = {dtype: matmul_tflops(device, dtype) for dtype in (torch.float32, torch.bfloat16)}
    for dtype, tflops in ceiling.items():
        result(bench="matmul", dtype=str(dtype).removeprefix("torch."), size=2048, tflops=tflops)
    ratio = ceiling[torch.bfloat16] / ceiling[torch.float32]
    result(bench="matmul", ratio_bf16_vs_fp32=ratio)
    print(
        f"matrix products 2048x2048: fp32 {ceiling[torch.float32]:.3f} TFLOP/s, bf16 {ceiling[torch.bfloat16]:.3f} "
        f"TFLOP/s ({ratio:.2f}x: the ceiling of bf16's gain on a step that is all convolution)\n",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        array, class_dirs = prepare_data(
            Path(tmp), args.mirror, need_png="conv4" in args.backbones and not args.no_baseline
        )
        split = split_to_device(array, device)
        for backbone in args.backbones:
            bench_backbone(backbone, args, device, default[backbone], split, class_dirs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
