"""The features stage: every probe image (:mod:`metacollapse.probes`) embedded by each listed checkpoint of a run.

A feature dump (``epoch_NNN.npz``) holds the embeddings, and optionally the spatially averaged outputs of the
backbone's blocks, computed in fp32 unless asked otherwise; its layout is in docs/CONTRACTS.md.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metacollapse.atomic import atomic_path
from metacollapse.device import Runtime
from metacollapse.dumps import QUERY, SUPPORT
from metacollapse.episodes import EpisodeIndices, load_device_split
from metacollapse.learners import Learner
from metacollapse.probes import load_probes
from metacollapse.runs import run_columns

log = logging.getLogger(__name__)

FEATURE_PRECISIONS = ("fp32", "train")


def resolve_layers(layers: str | Sequence[str] | None, available: Sequence[str], arch: str) -> list[str]:
    """The extra layers a dump holds, in depth order: none (``None``), every named block (``"all"``) or the listed
    ones; ``embedding`` is always dumped (as ``features``), so listing it adds nothing."""
    if layers is None:
        return []
    if isinstance(layers, str):
        layers = [layers]
    if list(layers) == ["all"]:
        return list(available)
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
    runtime: Runtime,
    layers: str | Sequence[str] | None = None,
    feature_precision: str = "fp32",
) -> None:
    """The features stage: one run's feature dump for every listed epoch, in one process (splits loaded once).

    ``feature_precision``: ``fp32`` computes the dumps in float32 whatever ``precision`` the run trains in, so the
    metrics carry no bf16 rounding; ``train`` uses ``precision``. ``layers``: see :func:`resolve_layers`.
    """
    from metacollapse.checkpoints import load_learner
    from metacollapse.models import layer_names

    if len(checkpoints) != len(outs):
        raise ValueError(f"{len(checkpoints)} checkpoints but {len(outs)} output paths")
    if feature_precision not in FEATURE_PRECISIONS:
        raise ValueError(f"feature_precision must be one of {FEATURE_PRECISIONS}, got {feature_precision!r}")
    if feature_precision == "fp32":  # the metrics then carry no bf16 rounding, whatever the training precision
        runtime = dataclasses.replace(runtime, precision="fp32")
    dev = runtime.device
    probe_spec, indices = load_probes(Path(probes_path))
    probes = probe_spec["probes"]
    splits = {split: load_device_split(data_dir, split, dev) for split in sorted({p["split"] for p in probes.values()})}
    began = time.perf_counter()
    for i, (checkpoint, out) in enumerate(zip(checkpoints, outs, strict=True)):
        learner, ckpt = load_learner(Path(checkpoint), spec, runtime)
        dumped = resolve_layers(layers, layer_names(learner.backbone), spec["backbone"]["arch"])
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
