"""Per-epoch weights (what the downstream stages read) and the rebuild of a run's learner from them.

A weights file ``results/{run}/checkpoints/epoch_NNN.pt`` holds the learner's ``state_dict`` and the few fields a
reader needs: the epoch, the run spec that made it, the precision and the environment. It is about the size of
the weights (optimizer, scheduler and RNG state live only in the training stage's rolling resume state, see
:mod:`metacollapse.training`). Every reader names the run spec it expects; a file of another run is refused with
the keys that differ.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from metacollapse import __version__
from metacollapse.atomic import atomic_path
from metacollapse.learners import Learner, build_learner
from metacollapse.models import build_backbone, embedding_dim
from metacollapse.runs import spec_difference

FORMAT = "metacollapse-weights"
VERSION = 2
KEYS = ("format", "version", "epoch", "spec", "n_train_classes", "precision", "model", "environment")


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used: unreadable, foreign, or from another run."""


def checkpoint_name(epoch: int) -> str:
    return f"epoch_{epoch:03d}.pt"


def build_run_learner(spec: Mapping[str, Any], n_train_classes: int) -> Learner:
    """The learner (backbone included) a run spec describes, freshly initialised from the current torch seed."""
    backbone = build_backbone(spec["backbone"])
    return build_learner(spec["learner"], backbone, embedding_dim(backbone), n_train_classes)


def save_weights(
    path: Path, learner: Learner, spec: Mapping[str, Any], epoch: int, n_train_classes: int, device: torch.device
) -> None:
    checkpoint = {
        "format": FORMAT,
        "version": VERSION,
        "epoch": epoch,
        "spec": dict(spec),
        "n_train_classes": n_train_classes,
        "precision": learner.precision,
        "model": {
            k: v.detach().to("cpu", memory_format=torch.contiguous_format) for k, v in learner.state_dict().items()
        },
        "environment": {"device": str(device), "torch": str(torch.__version__), "metacollapse": __version__},
    }
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load and validate a weights file; any failure is a ``CheckpointError`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a damaged file; the caller needs one
        raise CheckpointError(
            f"{path}: not a readable torch checkpoint ({type(error).__name__}: {str(error)[:200]})"
        ) from error
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        found = checkpoint.get("format") if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(f"{path}: not a metacollapse weights file (format {found!r}, expected {FORMAT!r})")
    if checkpoint.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {checkpoint.get('version')!r}, expected {VERSION}")
    missing = sorted(set(KEYS) - set(checkpoint))
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {missing}")
    return checkpoint


def load_learner(
    path: Path, spec: Mapping[str, Any], device: torch.device | str = "cpu", epoch: int | None = None
) -> tuple[Learner, dict[str, Any]]:
    """The learner stored at ``path``, on ``device``, after checking it was made by run ``spec`` (and ``epoch``)."""
    checkpoint = read_checkpoint(path)
    differences = spec_difference(dict(spec), checkpoint["spec"])
    if differences:
        raise CheckpointError(
            f"{path}: made by another run than {spec['name']!r}; it differs in: " + "; ".join(differences[:8])
        )
    if epoch is not None and checkpoint["epoch"] != epoch:
        raise CheckpointError(f"{path}: holds epoch {checkpoint['epoch']}, expected epoch {epoch}")
    learner = build_run_learner(checkpoint["spec"], int(checkpoint["n_train_classes"]))
    try:
        learner.load_state_dict(checkpoint["model"])
    except RuntimeError as error:
        raise CheckpointError(f"{path}: weights do not fit run {spec['name']!r}: {str(error)[:300]}") from error
    learner.precision = checkpoint["precision"]
    return learner.to(device), checkpoint
