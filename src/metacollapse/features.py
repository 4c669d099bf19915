"""Probe sets and per-epoch feature dumps.

A probe set is a fixed list of images, drawn once per run from its own seed (saved in ``probes.npz``) so that
every epoch and every backbone is embedded on exactly the same images:

- ``episodic`` probes: episodes with a protocol (``n_way``, ``n_support``, ``n_query``, ``episodes``) from a split;
  the paper's measurement is NC1/NC2 per episode on support and on query features.
- ``classes`` probes: ``classes`` whole classes of a split with all their images; the first ``n_support`` images of
  each class also act as the support set that makes ProtoNet prototypes.

A feature dump (``epoch_NNN.npz``) holds the embeddings of every probe image; its layout is in docs/CONTRACTS.md.
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
from metacollapse.episodes import EpisodeIndices, EpisodeSpec, check_spec, fixed_episode_indices

SUPPORT, QUERY = 0, 1


def probe_seed_for(seed: int, name: str) -> int:
    """The seed of one probe set: from the run's seed and the probe's name, so that adding, removing or
    reordering probes in the config leaves every other probe's images unchanged."""
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # 63 bits: torch.Generator.manual_seed takes any int64


def make_probes(probes: Mapping[str, Mapping[str, Any]], seed: int, data_dir: Path, out: Path) -> None:
    """Draw every probe set's image indices (CPU generator, seeded per probe by :func:`probe_seed_for`) and save
    them to ``out``."""
    from metacollapse.data import load_split

    arrays: dict[str, np.ndarray] = {}
    for name, probe in probes.items():
        probe_seed = probe_seed_for(seed, name)
        split, _ = load_split(Path(data_dir), probe["split"])
        num_classes, per_class = split.shape[:2]
        if probe["kind"] == "episodic":
            spec = EpisodeSpec(int(probe["n_way"]), int(probe["n_support"]), int(probe["n_query"]))
            indices = fixed_episode_indices(num_classes, per_class, spec, int(probe["episodes"]), probe_seed)
            classes, images = indices.classes.numpy(), indices.images.numpy()
        elif probe["kind"] == "classes":
            count = int(probe["classes"])
            if not 2 <= count <= num_classes:
                raise ValueError(f"probe {name!r}: classes={count}, but split {probe['split']!r} has {num_classes}")
            generator = torch.Generator().manual_seed(probe_seed)
            chosen = torch.randperm(num_classes, generator=generator)[:count].sort().values
            classes = chosen.numpy()[None, :]
            images = np.broadcast_to(np.arange(per_class), (1, count, per_class)).copy()
        else:
            raise ValueError(f"probe {name!r}: kind {probe['kind']!r}, expected 'episodic' or 'classes'")
        arrays[f"{name}/classes"] = classes.astype(np.int64)
        arrays[f"{name}/images"] = images.astype(np.int64)
    arrays["spec"] = np.array(json.dumps({"seed": seed, "probes": probes}, sort_keys=True))
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


@torch.no_grad()
def _embed(model: torch.nn.Module, images: torch.Tensor, batch: int) -> np.ndarray:
    out = [model(images[i : i + batch].to(torch.float32).unsqueeze(1)) for i in range(0, images.shape[0], batch)]
    return torch.cat(out).float().cpu().numpy()


def dump_features(
    checkpoint: Path,
    probes_path: Path,
    data_dir: Path,
    out: Path,
    backbone: str,
    device: str = "auto",
    bn_mode: str = "eval",
    batch_size: int = 1024,
) -> None:
    """Embed every probe image with the model of ``checkpoint`` and write the dump atomically.

    ``bn_mode="eval"`` uses batch norm's running statistics (the model as deployed). ``"train"`` normalises with
    batch statistics, as the paper's in-training measurement did: then each episode (support + query) or each
    class probe is one batch, matching how the network saw data in training. Running statistics are not saved.
    """
    from metacollapse.data import load_split
    from metacollapse.training import load_model, resolve_device

    if bn_mode not in ("eval", "train"):
        raise ValueError(f"bn_mode must be 'eval' or 'train', got {bn_mode!r}")
    dev = resolve_device(device)
    model, ckpt = load_model(Path(checkpoint), dev)
    model.train(bn_mode == "train")
    spec, probe_indices = load_probes(Path(probes_path))
    splits: dict[str, torch.Tensor] = {}

    feats, labels, probe_ids, episodes, roles = [], [], [], [], []
    names, kinds = list(spec["probes"]), []
    for probe_id, name in enumerate(names):
        probe = spec["probes"][name]
        kinds.append(probe["kind"])
        if probe["split"] not in splits:
            splits[probe["split"]] = torch.from_numpy(load_split(Path(data_dir), probe["split"])[0]).to(dev)
        split = splits[probe["split"]]
        indices = probe_indices[name]
        n_support = int(probe["n_support"])
        if probe["kind"] == "episodic":
            check_spec(EpisodeSpec(probe["n_way"], n_support, probe["n_query"]), *split.shape[:2], name)
        for episode in range(len(indices)):
            classes = indices.classes[episode].to(dev)
            images = indices.images[episode].to(dev)
            batch = split[classes[:, None], images]  # [n_way, shots, H, W]
            n_way, shots = batch.shape[:2]
            flat = batch.reshape(n_way * shots, *batch.shape[2:])
            # Eval mode: any batching gives the same features. Train mode: one episode or probe is one batch.
            size = batch_size if bn_mode == "eval" else flat.shape[0]
            feats.append(_embed(model, flat, size))
            labels.append(np.repeat(classes.cpu().numpy(), shots))
            role = np.where(np.arange(shots) < n_support, SUPPORT, QUERY).astype(np.int8)
            roles.append(np.tile(role, n_way))
            probe_ids.append(np.full(n_way * shots, probe_id, dtype=np.int64))
            episodes.append(np.full(n_way * shots, episode, dtype=np.int64))

    with atomic_path(out) as tmp, open(tmp, "wb") as fh:
        np.savez(
            fh,
            features=np.concatenate(feats).astype(np.float32),
            labels=np.concatenate(labels).astype(np.int64),
            probe=np.concatenate(probe_ids),
            probe_names=np.array(names),
            probe_kinds=np.array(kinds),
            episode=np.concatenate(episodes),
            role=np.concatenate(roles),
            epoch=np.array(int(ckpt["epoch"]), dtype=np.int64),
            backbone=np.array(backbone),
        )
