"""The probes stage: fixed probe sets, drawn once from their own seeds and shared by every run and epoch.

- ``episodic`` probes: episodes with a protocol (``n_way``, ``n_support``, ``n_query``, ``episodes``) of a split;
  the paper's measurement is NC1/NC2 per episode on support and on query features.
- ``classes`` probes: ``classes`` whole classes of a split with their first ``images`` images (default all); the
  first ``n_support`` of them also act as the support set that makes ProtoNet prototypes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metacollapse.atomic import atomic_path, read_npz
from metacollapse.data import load_split
from metacollapse.episodes import EpisodeIndices, EpisodeSpec, check_spec, fixed_episode_indices

TRAINING_SPLITS = ("train", "trainval", "fashion_train")


def probe_seed_for(seed: int, name: str) -> int:
    """The seed of one probe set: from the run's seed and the probe's name, so that adding, removing or
    reordering probes in the config leaves every other probe's images unchanged."""
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # 63 bits: torch.Generator.manual_seed takes any int64


def probe_bn_mode(probe: Mapping[str, Any]) -> str:
    """A probe's batch-norm mode: as configured, else the authors' choice: episodes of the training splits in
    train mode (batch statistics of the episode, as the network saw it in training), everything else in eval
    mode (running statistics)."""
    if "bn_mode" in probe:
        return str(probe["bn_mode"])
    return "train" if probe["kind"] == "episodic" and probe["split"] in TRAINING_SPLITS else "eval"


def _class_probe(
    probe: Mapping[str, Any], num_classes: int, per_class: int, seed: int, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """``classes`` random classes (sorted) and, for each, its first ``images`` images."""
    count, n_support = int(probe["classes"]), int(probe["n_support"])
    images = probe.get("images", per_class)
    if not 2 <= count <= num_classes:
        raise ValueError(f"{what}: classes={count}, expected 2 to {num_classes} (the split's classes)")
    if isinstance(images, bool) or not isinstance(images, int) or not 2 <= images <= per_class:
        raise ValueError(f"{what}: images={images!r}, expected an integer from 2 to {per_class} (images per class)")
    if not 1 <= n_support < images:
        raise ValueError(
            f"{what}: n_support={n_support}, expected 1 to {images - 1} (classes have {images} images, and the "
            "rest are the probe's queries)"
        )
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(num_classes, generator=generator)[:count].sort().values
    return chosen.numpy()[None, :], np.broadcast_to(np.arange(images), (1, count, images)).copy()


def make_probes(probes: Mapping[str, Mapping[str, Any]], seed: int, data_dir: Path, out: Path) -> None:
    """Draw every probe set's image indices (CPU generator, seeded per probe by :func:`probe_seed_for`, or by
    the probe's own ``seed``) and save them, with the resolved spec (batch-norm modes included), to ``out``."""
    arrays: dict[str, np.ndarray] = {}
    resolved: dict[str, dict[str, Any]] = {}
    for name, probe in probes.items():
        probe_seed = int(probe["seed"]) if "seed" in probe else probe_seed_for(seed, name)
        split, _ = load_split(Path(data_dir), probe["split"], mmap=True)
        num_classes, per_class = split.shape[:2]
        del split
        what = f"probe {name!r} on split {probe['split']!r}"
        if probe["kind"] == "episodic":
            spec = EpisodeSpec(int(probe["n_way"]), int(probe["n_support"]), int(probe["n_query"]))
            check_spec(spec, num_classes, per_class, what)
            indices = fixed_episode_indices(num_classes, per_class, spec, int(probe["episodes"]), probe_seed)
            classes, images = indices.classes.numpy(), indices.images.numpy()
        elif probe["kind"] == "classes":
            classes, images = _class_probe(probe, num_classes, per_class, probe_seed, what)
        else:
            raise ValueError(f"probe {name!r}: kind {probe['kind']!r}, expected 'episodic' or 'classes'")
        mode = probe_bn_mode(probe)
        if mode not in ("train", "eval"):
            raise ValueError(f"{what}: bn_mode {mode!r}, expected 'train' or 'eval'")
        resolved[name] = {**probe, "bn_mode": mode}
        arrays[f"{name}/classes"] = classes.astype(np.int64)
        arrays[f"{name}/images"] = images.astype(np.int64)
    arrays["spec"] = np.array(json.dumps({"seed": seed, "probes": resolved}, sort_keys=True))
    with atomic_path(out) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def load_probes(path: Path) -> tuple[dict[str, Any], dict[str, EpisodeIndices]]:
    """The probe specification and each probe's indices; a damaged or foreign file is a ValueError naming it."""
    arrays = read_npz(path, "the probe file")
    if "spec" not in arrays:
        raise ValueError(f"{path}: not a probe file (no 'spec' entry; has {sorted(arrays)})")
    try:
        spec = json.loads(str(arrays["spec"]))
        names = list(spec["probes"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: cannot read the probe file ({type(exc).__name__}: {exc})") from exc
    missing = [f"{n}/{k}" for n in names for k in ("classes", "images") if f"{n}/{k}" not in arrays]
    if missing:
        raise ValueError(f"{path}: probe file lacks {missing} named by its own spec")
    indices = {
        name: EpisodeIndices(torch.from_numpy(arrays[f"{name}/classes"]), torch.from_numpy(arrays[f"{name}/images"]))
        for name in names
    }
    return spec, indices
