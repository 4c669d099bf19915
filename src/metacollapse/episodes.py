"""Few-shot episodes drawn on the training device.

A split lives on the device as one tensor ``[classes, images_per_class, 28, 28]`` (uint8 unless scaled). An
episode is a pair of index tensors (which classes, which images of each class), drawn with a seeded
``torch.Generator``; its images are gathered by indexing and turned into floats on the device. No DataLoader and
no per-episode Python image work: a whole epoch of episode indices is drawn in one call.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from metacollapse.data import load_split, pixel_scale

log = logging.getLogger(__name__)

#: Seconds between progress lines while scoring many episodes.
LOG_PROGRESS_EVERY = 30.0


@dataclass(frozen=True)
class EpisodeSpec:
    """Shape of an episode: ``n_way`` classes, ``n_support`` + ``n_query`` distinct images of each."""

    n_way: int
    n_support: int
    n_query: int

    @property
    def shots_total(self) -> int:
        return self.n_support + self.n_query


@dataclass(frozen=True)
class EpisodeIndices:
    """Indices of a batch of episodes into a split tensor.

    ``classes``: ``[episodes, n_way]`` class rows; ``images``: ``[episodes, n_way, n_support + n_query]`` image
    columns. Within a class the first ``n_support`` images are the support set, the rest the queries.
    """

    classes: torch.Tensor
    images: torch.Tensor

    def __len__(self) -> int:
        return int(self.classes.shape[0])

    def to(self, device: torch.device | str) -> EpisodeIndices:
        return EpisodeIndices(self.classes.to(device), self.images.to(device))

    def __getitem__(self, episode: int) -> EpisodeIndices:
        return EpisodeIndices(self.classes[episode : episode + 1], self.images[episode : episode + 1])


def check_spec(spec: EpisodeSpec, num_classes: int, images_per_class: int, what: str = "episode") -> None:
    """Fail early, naming the numbers, if the split cannot supply such episodes."""
    if spec.n_way < 2 or spec.n_support < 1 or spec.n_query < 1:
        raise ValueError(f"{what}: need n_way >= 2, n_support >= 1, n_query >= 1, got {spec}")
    if spec.n_way > num_classes:
        raise ValueError(f"{what}: n_way={spec.n_way} but the split has only {num_classes} classes")
    if spec.shots_total > images_per_class:
        raise ValueError(f"{what}: n_support + n_query = {spec.shots_total} but classes have {images_per_class} images")


def sample_episode_indices(
    num_classes: int,
    images_per_class: int,
    spec: EpisodeSpec,
    episodes: int,
    generator: torch.Generator,
) -> EpisodeIndices:
    """Draw ``episodes`` episodes at once, uniformly: classes without replacement, images without replacement.

    Ranking uniform noise (``rand().argsort()``) gives a uniform random permutation per row, batched over
    episodes, on the generator's device; this is one kernel per epoch instead of a Python loop of randperms.
    """
    check_spec(spec, num_classes, images_per_class)
    device = generator.device
    class_noise = torch.rand(episodes, num_classes, generator=generator, device=device)
    classes = class_noise.argsort(dim=1)[:, : spec.n_way]
    image_noise = torch.rand(episodes, spec.n_way, images_per_class, generator=generator, device=device)
    images = image_noise.argsort(dim=2)[:, :, : spec.shots_total]
    return EpisodeIndices(classes, images)


def fixed_episode_indices(
    num_classes: int, images_per_class: int, spec: EpisodeSpec, episodes: int, seed: int
) -> EpisodeIndices:
    """Episodes drawn once from their own seed on the CPU, so they are the same on every device and backbone."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return sample_episode_indices(num_classes, images_per_class, spec, episodes, generator)


def gather_episode(
    split: torch.Tensor, indices: EpisodeIndices, spec: EpisodeSpec
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of one episode as float tensors on the split's device.

    Returns ``support`` ``[n_way * n_support, 1, H, W]`` and ``query`` ``[n_way * n_query, 1, H, W]``, both
    class-major (all images of class 0 first), values as the split holds them.
    """
    if len(indices) != 1:
        raise ValueError(f"gather_episode takes one episode, got {len(indices)}")
    classes = indices.classes[0].to(split.device)
    images = indices.images[0].to(split.device)
    batch = split[classes[:, None], images]  # [n_way, shots_total, H, W], still uint8
    batch = batch.to(torch.float32).unsqueeze(2)  # [n_way, shots_total, 1, H, W]
    support = batch[:, : spec.n_support].reshape(-1, *batch.shape[2:])
    query = batch[:, spec.n_support :].reshape(-1, *batch.shape[2:])
    return support, query


def split_to_device(array: np.ndarray, device: torch.device | str, scale: float = 1.0) -> torch.Tensor:
    """Move a whole uint8 split array to the device once: as uint8 when ``scale`` is 1 (4x smaller than float32),
    else as float32 ``array * scale`` (``metacollapse.data.pixel_scale``), computed on the CPU."""
    if array.dtype != np.uint8 or array.ndim != 4:
        raise ValueError(f"expected a uint8 array [classes, images, H, W], got {array.dtype} {array.shape}")
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if scale != 1:
        tensor = tensor.to(torch.float32) * scale
    return tensor.to(device)


def load_device_split(
    data_dir: Path, split: str, device: torch.device | str, images_per_class: int | None = None
) -> torch.Tensor:
    """A processed split (:func:`metacollapse.data.load_split`) on the device, at its pixel scale; with
    ``images_per_class`` only the first that many images of each class."""
    array, _ = load_split(Path(data_dir), split)
    if images_per_class is not None:
        if not 1 <= images_per_class <= array.shape[1]:
            raise ValueError(f"split {split!r}: images_per_class={images_per_class}, expected 1 to {array.shape[1]}")
        array = array[:, :images_per_class]
    return split_to_device(array, device, pixel_scale(split))


def sample_batch_indices(
    class_ids: torch.Tensor, images_per_class: int, batch_size: int, batches: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mini-batches of labelled images for non-episodic learners: ``(classes, images)``, each ``[batches, B]``.

    Every image of the classes in ``class_ids`` is equally likely; draws are with replacement across batches and
    within a batch (a batch of 256 from ~77,000 images rarely repeats one).
    """
    device = generator.device
    pool = class_ids.numel() * images_per_class
    flat = torch.randint(pool, (batches, batch_size), generator=generator, device=device)
    return class_ids.to(device)[flat // images_per_class], flat % images_per_class


def gather_batch(split: torch.Tensor, classes: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Images ``[B, 1, H, W]`` float on the split's device for one mini-batch of (class, image) indices."""
    return split[classes.to(split.device), images.to(split.device)].to(torch.float32).unsqueeze(1)


@torch.no_grad()
def score_episodes(
    learner: torch.nn.Module, split: torch.Tensor, spec: EpisodeSpec, indices: EpisodeIndices, what: str = ""
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-episode loss and accuracy of ``learner`` in eval mode over fixed episodes (float32, on the device).

    Nothing is copied to the host inside the loop, except for a progress line every LOG_PROGRESS_EVERY seconds.
    """
    learner.eval()
    losses = torch.empty(len(indices), device=split.device)
    accuracies = torch.empty(len(indices), device=split.device)
    shown = time.monotonic()
    for episode in range(len(indices)):
        support, query = gather_episode(split, indices[episode], spec)
        losses[episode], accuracies[episode] = learner.fewshot(support, query, spec.n_way)
        if what and time.monotonic() - shown >= LOG_PROGRESS_EVERY:
            log.info(
                "%s: %d/%d episodes, accuracy so far %.4f",
                what,
                episode + 1,
                len(indices),
                float(accuracies[: episode + 1].mean()),
            )
            shown = time.monotonic()
    return losses, accuracies
