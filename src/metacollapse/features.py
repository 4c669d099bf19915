"""Probe sets and per-epoch feature dumps.

A probe set is a fixed list of images, drawn once per run from its own seed (saved in ``probes.npz``) so that
every epoch and every backbone is embedded on exactly the same images:

- ``episodic`` probes: episodes with a protocol (``n_way``, ``n_support``, ``n_query``, ``episodes``) from a split;
  the paper's measurement is NC1/NC2 per episode on support and on query features.
- ``classes`` probes: ``classes`` whole classes of a split with all their images; the first ``n_support`` images of
  each class also act as the support set that makes ProtoNet prototypes.

A feature dump (``epoch_NNN.npz``) holds the embeddings of every probe image, and optionally the spatially averaged
outputs of the backbone's blocks; its layout is in docs/CONTRACTS.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metacollapse.atomic import atomic_path, read_npz
from metacollapse.episodes import EpisodeIndices, EpisodeSpec, check_spec, fixed_episode_indices
from metacollapse.learners import Learner
from metacollapse.runs import run_columns

log = logging.getLogger(__name__)

SUPPORT, QUERY = 0, 1


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
    return "train" if probe["kind"] == "episodic" and probe["split"] in ("train", "trainval") else "eval"


def make_probes(probes: Mapping[str, Mapping[str, Any]], seed: int, data_dir: Path, out: Path) -> None:
    """Draw every probe set's image indices (CPU generator, seeded per probe by :func:`probe_seed_for`, or by
    the probe's own ``seed``) and save them, with the resolved spec (batch-norm modes included), to ``out``."""
    from metacollapse.data import load_split

    arrays: dict[str, np.ndarray] = {}
    resolved: dict[str, dict[str, Any]] = {}
    for name, probe in probes.items():
        probe_seed = int(probe["seed"]) if "seed" in probe else probe_seed_for(seed, name)
        split, _ = load_split(Path(data_dir), probe["split"])
        num_classes, per_class = split.shape[:2]
        what = f"probe {name!r} on split {probe['split']!r}"
        if probe["kind"] == "episodic":
            spec = EpisodeSpec(int(probe["n_way"]), int(probe["n_support"]), int(probe["n_query"]))
            check_spec(spec, num_classes, per_class, what)
            indices = fixed_episode_indices(num_classes, per_class, spec, int(probe["episodes"]), probe_seed)
            classes, images = indices.classes.numpy(), indices.images.numpy()
        elif probe["kind"] == "classes":
            count, n_support = int(probe["classes"]), int(probe["n_support"])
            if not 2 <= count <= num_classes:
                raise ValueError(f"{what}: classes={count}, expected 2 to {num_classes} (the split's classes)")
            if not 1 <= n_support < per_class:
                raise ValueError(
                    f"{what}: n_support={n_support}, expected 1 to {per_class - 1} (classes have {per_class} "
                    "images, and the rest are the probe's queries)"
                )
            generator = torch.Generator().manual_seed(probe_seed)
            chosen = torch.randperm(num_classes, generator=generator)[:count].sort().values
            classes = chosen.numpy()[None, :]
            images = np.broadcast_to(np.arange(per_class), (1, count, per_class)).copy()
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


FEATURE_PRECISIONS = ("fp32", "train")


def resolve_layers(layers: str | Sequence[str] | None, available: Sequence[str], arch: str) -> list[str]:
    """The extra layers a dump holds, in depth order: none (``None``), every named block (``"all"``) or the listed
    ones; ``embedding`` is always dumped (as ``features``), so listing it adds nothing."""
    if layers is None:
        return []
    if layers == "all":
        return list(available)
    if isinstance(layers, str):
        layers = [layers]
    unknown = sorted(set(layers) - {*available, "embedding"})
    if unknown:
        raise ValueError(
            f"unknown layers {unknown} for backbone {arch!r}; allowed: {[*available, 'embedding']} or 'all'"
        )
    return [name for name in available if name in layers]


@torch.no_grad()
def _embed(learner: Learner, images: torch.Tensor, batch: int, layers: Sequence[str]) -> dict[str, torch.Tensor]:
    """``{"embedding": [n, d], layer: [n, d_layer], ...}`` of images ``[n, H, W]``, on their device, in chunks."""
    chunks = [
        learner.embed_layers(images[i : i + batch].to(torch.float32).unsqueeze(1), layers)
        for i in range(0, len(images), batch)
    ]
    return {key: torch.cat([chunk[key] for chunk in chunks]) for key in chunks[0]}


def dump_features(
    learner: Learner,
    spec: Mapping[str, Any],
    epoch: int,
    probes: Mapping[str, Any],
    probe_indices: Mapping[str, EpisodeIndices],
    splits: Mapping[str, torch.Tensor],
    out: Path,
    batch_size: int = 1024,
    layers: Sequence[str] = (),
) -> None:
    """Embed every probe image with ``learner`` and write one feature dump (docs/CONTRACTS.md) atomically.

    Each probe is embedded in its own batch-norm mode. ``eval``: running statistics (the model as deployed), any
    batching gives the same features. ``train``: batch statistics, with one episode (support + query) or one
    class probe as one batch, as the network saw data in training; the running statistics this updates are
    restored afterwards, so the next probe sees the checkpoint's. ``layers`` (names of the backbone's blocks) adds
    their spatially averaged outputs from the same forward passes. Features stay on the device until a probe is
    done, then come to the host in one copy.
    """
    keys = ["embedding", *layers]
    feats: dict[str, list[np.ndarray]] = {key: [] for key in keys}
    labels, probe_ids, episodes, roles = [], [], [], []
    names = list(probes)
    for probe_id, name in enumerate(names):
        probe = probes[name]
        train_mode = probe["bn_mode"] == "train"
        saved = {k: v.clone() for k, v in learner.state_dict().items()} if train_mode else None
        learner.train(train_mode)
        split, indices, n_support = splits[probe["split"]], probe_indices[name], int(probe["n_support"])
        classes, images = indices.classes.to(split.device), indices.images.to(split.device)
        n_episodes, n_way, shots = indices.images.shape
        per_episode: dict[str, list[torch.Tensor]] = {key: [] for key in keys}
        for episode in range(n_episodes):
            flat = split[classes[episode][:, None], images[episode]].flatten(0, 1)  # [n_way * shots, H, W]
            for key, value in _embed(learner, flat, flat.shape[0] if train_mode else batch_size, layers).items():
                per_episode[key].append(value)
        for key in keys:
            feats[key].append(torch.cat(per_episode[key]).cpu().numpy())
        if saved is not None:
            learner.load_state_dict(saved)
        labels.append(np.repeat(indices.classes.numpy(), shots, axis=1).reshape(-1))
        role = np.where(np.arange(shots) < n_support, SUPPORT, QUERY).astype(np.int8)
        roles.append(np.tile(role, n_episodes * n_way))
        probe_ids.append(np.full(n_episodes * n_way * shots, probe_id, dtype=np.int64))
        episodes.append(np.repeat(np.arange(n_episodes, dtype=np.int64), n_way * shots))
    arrays = {
        "features": np.concatenate(feats["embedding"]).astype(np.float32),
        "labels": np.concatenate(labels).astype(np.int64),
        "probe": np.concatenate(probe_ids),
        "probe_names": np.array(names),
        "probe_kinds": np.array([probes[n]["kind"] for n in names]),
        "probe_bn_modes": np.array([probes[n]["bn_mode"] for n in names]),
        "probe_splits": np.array([probes[n]["split"] for n in names]),
        "episode": np.concatenate(episodes),
        "role": np.concatenate(roles),
        "epoch": np.array(epoch, dtype=np.int64),
        "meta": np.array(json.dumps(run_columns(spec), sort_keys=True)),
    }
    if layers:
        arrays["layer_names"] = np.array(list(layers))
        arrays.update({f"features@{layer}": np.concatenate(feats[layer]).astype(np.float32) for layer in layers})
    head = learner.head_weights()
    if head is not None:
        weight, bias, class_ids = head
        arrays["classifier_weight"] = weight.detach().float().cpu().numpy()
        arrays["classifier_bias"] = bias.detach().float().cpu().numpy()
        arrays["classifier_classes"] = class_ids.detach().cpu().numpy().astype(np.int64)
        arrays["classifier_split"] = np.array(spec["train"]["split"])
    with atomic_path(out) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def features_stage(
    spec: Mapping[str, Any],
    checkpoints: Sequence[Path],
    probes_path: Path,
    data_dir: Path,
    outs: Sequence[Path],
    device: str = "auto",
    precision: str = "auto",
    threads: int | None = None,
    layers: str | Sequence[str] | None = None,
    feature_precision: str = "fp32",
) -> None:
    """The features stage: one run's feature dump for every listed epoch, in one process (splits loaded once).

    ``feature_precision``: ``fp32`` computes the dumps in float32 whatever ``precision`` the run trains in, so the
    metrics carry no bf16 rounding; ``train`` uses ``precision``. ``layers``: see :func:`resolve_layers`.
    """
    from metacollapse.checkpoints import load_learner
    from metacollapse.data import load_split
    from metacollapse.device import configure, prepare_model, resolve_device, resolve_precision
    from metacollapse.models import layer_names

    if len(checkpoints) != len(outs):
        raise ValueError(f"{len(checkpoints)} checkpoints but {len(outs)} output paths")
    if feature_precision not in FEATURE_PRECISIONS:
        raise ValueError(f"feature_precision must be one of {FEATURE_PRECISIONS}, got {feature_precision!r}")
    configure(threads)
    dev = resolve_device(device)
    run_precision = resolve_precision(precision, dev)
    prec = run_precision if feature_precision == "train" else "fp32"
    probe_spec, indices = load_probes(Path(probes_path))
    probes = probe_spec["probes"]
    splits = {
        split: torch.from_numpy(load_split(Path(data_dir), split)[0]).to(dev)
        for split in sorted({p["split"] for p in probes.values()})
    }
    began = time.perf_counter()
    for i, (checkpoint, out) in enumerate(zip(checkpoints, outs, strict=True)):
        learner, ckpt = load_learner(Path(checkpoint), spec, dev)
        dumped = resolve_layers(layers, layer_names(learner.backbone), spec["backbone"]["arch"])
        learner.precision = prec
        learner = prepare_model(learner, dev, prec)
        dump_features(learner, spec, int(ckpt["epoch"]), probes, indices, splits, Path(out), layers=dumped)
        log.info(
            "run %s: features of epoch %d -> %s (%d/%d, %.1fs)",
            spec["name"],
            ckpt["epoch"],
            out,
            i + 1,
            len(outs),
            time.perf_counter() - began,
        )
