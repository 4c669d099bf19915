"""Training throughput: device-resident episodes vs a per-episode PNG pipeline like the original ProtoNet code.

Measured in one run and printed together:
  1. episodes/s of a full training step (sample, forward, backward, Adam) per backbone, with our pipeline
     (split resident on the device as uint8, episodes drawn by indexing), and with a baseline that loads every
     episode's images from PNG files in Python (open, rotate, resize, invert, stack) and moves them to the device,
     as the original Prototypical Networks loader did; their ratio;
  2. on CPU: the share of one Conv-4 training step spent drawing and gathering the episode (target < 2%);
  3. peak memory (CUDA allocator peak on GPU, process max RSS on CPU).

    python bench/bench_training.py --mirror ../shared/data/omniglot [--device cuda] [--episodes 20]
"""

from __future__ import annotations

import argparse
import random
import resource
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from metacollapse.data import download_omniglot, load_split, prepare_splits
from metacollapse.episodes import EpisodeSpec, gather_episode, sample_episode_indices, split_to_device
from metacollapse.models import build_backbone
from metacollapse.protonet import embed_episode, episode_loss

REPO = Path(__file__).resolve().parents[1]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def training_step(model, optimizer, support, query, n_way):
    s, q = embed_episode(model, support, query)
    loss, _ = episode_loss(s, q, n_way)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss


def time_ours(model, optimizer, split, spec, episodes, device) -> float:
    generator = torch.Generator(device=device).manual_seed(0)
    indices = sample_episode_indices(split.shape[0], split.shape[1], spec, episodes + 3, generator)
    for e in range(3):  # warm-up (cuDNN autotuning, allocator)
        training_step(model, optimizer, *gather_episode(split, indices[e], spec), spec.n_way)
    synchronize(device)
    began = time.perf_counter()
    for e in range(3, episodes + 3):
        training_step(model, optimizer, *gather_episode(split, indices[e], spec), spec.n_way)
    synchronize(device)
    return episodes / (time.perf_counter() - began)


def load_png_episode(class_dirs, spec, rng):
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


def time_baseline(model, optimizer, class_dirs, spec, episodes, device) -> float:
    rng = random.Random(0)
    for _ in range(2):
        s, q = load_png_episode(class_dirs, spec, rng)
        training_step(model, optimizer, s.to(device), q.to(device), spec.n_way)
    synchronize(device)
    began = time.perf_counter()
    for _ in range(episodes):
        s, q = load_png_episode(class_dirs, spec, rng)
        training_step(model, optimizer, s.to(device), q.to(device), spec.n_way)
    synchronize(device)
    return episodes / (time.perf_counter() - began)


def sampling_share(model, optimizer, split, spec, repeats=30) -> tuple[float, float]:
    """Seconds per episode draw+gather and per full Conv-4 step (medians), on CPU."""
    generator = torch.Generator().manual_seed(1)
    draws, steps = [], []
    for _ in range(repeats):
        began = time.perf_counter()
        indices = sample_episode_indices(split.shape[0], split.shape[1], spec, 1, generator)
        support, query = gather_episode(split, indices[0], spec)
        drawn = time.perf_counter()
        training_step(model, optimizer, support, query, spec.n_way)
        done = time.perf_counter()
        draws.append(drawn - began)
        steps.append(done - began)
    return statistics.median(draws), statistics.median(steps)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mirror", default=str(REPO.parent / "shared" / "data" / "omniglot"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--episodes", type=int, default=10, help="timed episodes per measurement")
    parser.add_argument("--backbones", nargs="+", default=["conv4", "resnet18"])
    parser.add_argument("--n-way", type=int, default=60)
    args = parser.parse_args()
    device = torch.device(args.device)
    spec = EpisodeSpec(args.n_way, 5, 5)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        download_omniglot(tmp / "raw", args.mirror)
        prepare_splits(tmp / "raw", REPO / "data" / "splits" / "vinyals", tmp / "processed", ["train"])
        array, names = load_split(tmp / "processed", "train")
        # The baseline reads PNG files from disk, as the original code did: extract the train characters.
        with zipfile.ZipFile(tmp / "raw" / "images_background.zip") as zf:
            zf.extractall(tmp / "png")
        with zipfile.ZipFile(tmp / "raw" / "images_evaluation.zip") as zf:
            zf.extractall(tmp / "png")
        roots = [tmp / "png" / "images_background", tmp / "png" / "images_evaluation"]
        class_dirs = []
        for name in names:
            alphabet, character, rot = name.split("/")
            folder = next(r / alphabet / character for r in roots if (r / alphabet / character).is_dir())
            class_dirs.append((folder, int(rot[3:])))

        split = split_to_device(array, device)
        print(
            f"device: {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
            f"torch threads {torch.get_num_threads()}, episode {spec.n_way}-way {spec.n_support}-shot "
            f"{spec.n_query}-query, {args.episodes} timed episodes"
        )
        print(f"{'backbone':<10} {'ours ep/s':>10} {'PNG ep/s':>10} {'ratio':>7} {'peak MiB':>9}")
        for backbone in args.backbones:
            torch.manual_seed(0)
            model = build_backbone({"arch": backbone}).to(device).train()
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
            if device.type == "cuda":
                torch.backends.cudnn.benchmark = True
                torch.cuda.reset_peak_memory_stats(device)
            ours = time_ours(model, optimizer, split, spec, args.episodes, device)
            peak = (
                torch.cuda.max_memory_allocated(device) / 2**20
                if device.type == "cuda"
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            )
            baseline = time_baseline(model, optimizer, class_dirs, spec, max(3, args.episodes // 2), device)
            print(f"{backbone:<10} {ours:>10.2f} {baseline:>10.2f} {ours / baseline:>6.1f}x {peak:>9.0f}")

        cpu_split = split_to_device(array, "cpu")
        torch.manual_seed(0)
        model = build_backbone({"arch": "conv4"}).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        draw, step = sampling_share(model, optimizer, cpu_split, spec)
        print(
            f"CPU Conv-4: episode draw+gather {draw * 1e3:.2f} ms of a {step * 1e3:.1f} ms training step "
            f"= {100 * draw / step:.2f}% (target < 2%)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
