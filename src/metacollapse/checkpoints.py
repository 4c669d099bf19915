"""Per-epoch weights, the rebuild of a run's learner from them, and the training state a run resumes from.

Layouts and keys: ``docs/CONTRACTS.md``. A weights file holds the learner's ``state_dict``, the epoch, the run spec
that made it and its precision; every reader names the run spec it expects and refuses a file of another run.
"""

from __future__ import annotations

import logging
import os
import shutil
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from metacollapse import __version__
from metacollapse.atomic import atomic_path, remove_temp_files
from metacollapse.device import Runtime
from metacollapse.learners import Learner, build_learner
from metacollapse.models import build_backbone, embedding_dim
from metacollapse.runs import spec_difference

log = logging.getLogger(__name__)

FORMAT = "metacollapse-weights"
VERSION = 2
KEYS = ("format", "version", "epoch", "spec", "n_train_classes", "precision", "model", "environment")
RESUME_FORMAT = "metacollapse-resume"
#: Resume states kept per run: the newest, and the one before it in case the newest epoch's files are damaged.
RESUME_KEPT = 2


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used: unreadable, foreign, or from another run."""


def checkpoint_name(epoch: int) -> str:
    return f"epoch_{epoch:03d}.pt"


def build_run_learner(spec: Mapping[str, Any], n_train_classes: int) -> Learner:
    """The learner (backbone included) a run spec describes, freshly initialised from the current torch seed."""
    backbone = build_backbone(spec["backbone"])
    return build_learner(spec["learner"], backbone, embedding_dim(backbone), n_train_classes)


def save_weights(path: Path, learner: Learner, spec: Mapping[str, Any], epoch: int, n_train_classes: int) -> None:
    device = next(learner.parameters()).device
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
    path: Path, spec: Mapping[str, Any], runtime: Runtime | None = None, epoch: int | None = None
) -> tuple[Learner, dict[str, Any]]:
    """The learner stored at ``path`` after checking it was made by run ``spec`` (and ``epoch``).

    With a ``runtime`` it is placed on that runtime's device and precision; without one it stays on the CPU in the
    precision it was trained in.
    """
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
    if runtime is None:
        learner.precision = checkpoint["precision"]
        return learner, checkpoint
    return runtime.place(learner), checkpoint


def _looks_whole(path: Path) -> bool:
    """A cheap check that a torch file is not truncated: its zip directory (at the end of the file) reads."""
    try:
        with zipfile.ZipFile(path) as archive:
            return bool(archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


class RunStore:
    """One run's training state, kept in ``<out>/train_state/<fingerprint>/`` until a replacement has finished.

    Snakemake deletes a job's declared outputs before it reruns the job, so they cannot be what a restarted or
    failed job falls back on. The store holds every epoch's weights and, while the run trains, the last
    ``RESUME_KEPT`` resume states (``resume_NNN.pt``: optimizer, scheduler, RNG states and the log so far); a
    finished run keeps its weights and ``train_log.csv`` there, hard-linked to the published files. A rerun of
    the same fingerprint (run spec, data, device type, precision) republishes them without training; a failed run
    of another fingerprint leaves them in place; a finished one replaces them.
    """

    def __init__(self, out_dir: Path, fingerprint: str) -> None:
        self.out_dir = Path(out_dir)
        self.root = self.out_dir / "train_state"
        self.folder = self.root / fingerprint[:16]
        self.fingerprint = fingerprint
        for folder in (self.folder, self.out_dir / "checkpoints"):
            # A job killed inside torch.save leaves its temporary file; this job is the only writer here.
            for path in remove_temp_files(folder):
                log.info("removed %s, left by a killed run", path)

    def weights(self, epoch: int) -> Path:
        return self.folder / checkpoint_name(epoch)

    def _whole(self, epochs: int) -> bool:
        return all(self.weights(e).is_file() and _looks_whole(self.weights(e)) for e in range(epochs + 1))

    def finished(self, epochs: int) -> pd.DataFrame | None:
        """The log of a finished run of this fingerprint whose weights are all here and whole, else None."""
        path = self.folder / "train_log.csv"
        if not path.is_file() or not self._whole(epochs):
            return None
        frame = pd.read_csv(path)
        return frame if frame["epoch"].tolist() == list(range(epochs + 1)) else None

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)

    def save(self, learner: Learner, spec: Mapping[str, Any], epoch: int, n_classes: int, state: dict) -> None:
        """Epoch ``epoch``'s weights, then its resume state; older resume states beyond RESUME_KEPT go."""
        save_weights(self.weights(epoch), learner, spec, epoch, n_classes)
        with atomic_path(self.folder / f"resume_{epoch:03d}.pt") as tmp:
            torch.save({"format": RESUME_FORMAT, "epoch": epoch, "fingerprint": self.fingerprint, **state}, tmp)
        for old in sorted(self.folder.glob("resume_[0-9][0-9][0-9].pt"))[:-RESUME_KEPT]:
            old.unlink()

    def resume(self) -> dict[str, Any] | None:
        """The newest usable resume state: readable, of this fingerprint, and with every epoch's weights up to it
        present and whole (a damaged newest epoch falls back to the state before it); None to start afresh."""
        for path in sorted(self.folder.glob("resume_[0-9][0-9][0-9].pt"), reverse=True):
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as error:  # a damaged state is skipped; an older one or a fresh start follows
                log.warning("%s is unreadable (%s): trying an older state", path, str(error)[:200])
                continue
            if state.get("format") != RESUME_FORMAT or state.get("fingerprint") != self.fingerprint:
                log.warning("%s holds state of another run spec, data, device or precision: ignored", path)
                continue
            if not self._whole(int(state["epoch"])):
                log.warning("%s: the weights of some epoch up to %d are missing or damaged", path, state["epoch"])
                continue
            return state
        return None

    def publish(self, rows: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
        """Mark the run finished, expose it (``checkpoints/``, ``train_log.csv``) and drop superseded states."""
        epochs = len(rows) - 1
        frame = pd.DataFrame(rows, columns=columns)
        with atomic_path(self.folder / "train_log.csv") as tmp:
            frame.to_csv(tmp, index=False, float_format="%.9g")
        return self.republish(epochs)

    def republish(self, epochs: int) -> pd.DataFrame:
        """Link the finished run's weights into ``checkpoints/`` and its log to ``train_log.csv``."""
        checkpoints = self.out_dir / "checkpoints"
        checkpoints.mkdir(parents=True, exist_ok=True)
        for stale in checkpoints.glob("epoch_[0-9][0-9][0-9].pt"):  # epochs of an earlier, longer run
            if int(stale.stem.split("_")[1]) > epochs:
                stale.unlink()
        for epoch in range(epochs + 1):
            _link(self.weights(epoch), checkpoints / checkpoint_name(epoch))
        _link(self.folder / "train_log.csv", self.out_dir / "train_log.csv")
        for path in self.folder.glob("resume_*.pt"):
            path.unlink()
        for other in self.root.iterdir():
            if other != self.folder:  # the state of a replaced or abandoned configuration of this run
                shutil.rmtree(other) if other.is_dir() else other.unlink()
        return pd.read_csv(self.out_dir / "train_log.csv")


def _link(source: Path, target: Path) -> None:
    """``target`` becomes a hard link to ``source`` (a copy across filesystems), atomically, with a fresh mtime."""
    with atomic_path(target, fsync=False) as tmp:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copy2(source, tmp)
    os.utime(target)
