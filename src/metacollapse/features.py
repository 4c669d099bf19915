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
from metacollapse.episodes import EpisodeIndices, load_device_split
from metacollapse.learners import Learner
from metacollapse.probes import load_probes
from metacollapse.runs import run_columns

log = logging.getLogger(__name__)

SUPPORT, QUERY = 0, 1


@torch.no_grad()
def _embed(learner: Learner, images: torch.Tensor, batch: int) -> np.ndarray:
    chunks = [learner.embed(images[i : i + batch].to(torch.float32).unsqueeze(1)) for i in range(0, len(images), batch)]
    return torch.cat(chunks).cpu().numpy()


def dump_features(
    learner: Learner,
    spec: Mapping[str, Any],
    epoch: int,
    probes: Mapping[str, Any],
    probe_indices: Mapping[str, EpisodeIndices],
    splits: Mapping[str, torch.Tensor],
    out: Path,
    batch_size: int = 1024,
) -> None:
    """Embed every probe image with ``learner`` and write one feature dump (docs/CONTRACTS.md) atomically.

    Each probe is embedded in its own batch-norm mode. ``eval``: running statistics (the model as deployed), any
    batching gives the same features. ``train``: batch statistics, with one episode (support + query) or one
    class probe as one batch, as the network saw data in training; the running statistics this updates are
    restored afterwards, so the next probe sees the checkpoint's.
    """
    feats, labels, probe_ids, episodes, roles = [], [], [], [], []
    names = list(probes)
    for probe_id, name in enumerate(names):
        probe = probes[name]
        train_mode = probe["bn_mode"] == "train"
        saved = {k: v.clone() for k, v in learner.state_dict().items()} if train_mode else None
        learner.train(train_mode)
        split, indices, n_support = splits[probe["split"]], probe_indices[name], int(probe["n_support"])
        for episode in range(len(indices)):
            classes = indices.classes[episode].to(split.device)
            batch = split[classes[:, None], indices.images[episode].to(split.device)]  # [n_way, shots, H, W]
            n_way, shots = batch.shape[:2]
            flat = batch.reshape(n_way * shots, *batch.shape[2:])
            feats.append(_embed(learner, flat, flat.shape[0] if train_mode else batch_size))
            labels.append(np.repeat(classes.cpu().numpy(), shots))
            roles.append(np.tile(np.where(np.arange(shots) < n_support, SUPPORT, QUERY).astype(np.int8), n_way))
            probe_ids.append(np.full(n_way * shots, probe_id, dtype=np.int64))
            episodes.append(np.full(n_way * shots, episode, dtype=np.int64))
        if saved is not None:
            learner.load_state_dict(saved)
    arrays = {
        "features": np.concatenate(feats).astype(np.float32),
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
    head = learner.classifier()
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
) -> None:
    """The features stage: one run's feature dump for every listed epoch, in one process (splits loaded once)."""
    from metacollapse.checkpoints import load_learner

    if len(checkpoints) != len(outs):
        raise ValueError(f"{len(checkpoints)} checkpoints but {len(outs)} output paths")
    dev = runtime.device
    probe_spec, indices = load_probes(Path(probes_path))
    probes = probe_spec["probes"]
    splits = {split: load_device_split(data_dir, split, dev) for split in sorted({p["split"] for p in probes.values()})}
    began = time.perf_counter()
    for i, (checkpoint, out) in enumerate(zip(checkpoints, outs, strict=True)):
        learner, ckpt = load_learner(Path(checkpoint), spec, runtime)
        dump_features(learner, spec, int(ckpt["epoch"]), probes, indices, splits, Path(out))
        log.info(
            "run %s: features of epoch %d -> %s (%d/%d, %.1fs)",
            spec["name"],
            ckpt["epoch"],
            out,
            i + 1,
            len(outs),
            time.perf_counter() - began,
        )
