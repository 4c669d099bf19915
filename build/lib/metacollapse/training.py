"""Episodic ProtoNet training with per-epoch checkpoints and exact resume.

Owns the training loop, the checkpoint format and the resume logic. One call of ``train`` trains one backbone
for the configured number of epochs and leaves:

- ``<out_dir>/checkpoints/epoch_NNN.pt`` for every epoch (model, optimizer, scheduler, RNG states, the
  parameters that made it, the log so far), and
- ``<out_dir>/train_log.csv``.

Resume. Snakemake deletes a job's declared outputs before it runs the job, so the declared checkpoints cannot be
what a restarted job resumes from. Every epoch is therefore first committed (atomically) to the undeclared work
folder ``<out_dir>/train_state/``; only when all epochs exist are they hard-linked into ``checkpoints/`` (no
extra disk) and the log written. A job killed at any point restarts from the last complete epoch in
``train_state/``, provided that state was made by the same parameters and the same data (a fingerprint in every
checkpoint); otherwise the stale state is discarded. All randomness (model init, episode sampling) comes from
generators whose states are saved at the end of every epoch, so a resumed run ends with the same weights and the
same log (bitwise on CPU; timing columns excepted) as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm import tqdm

from metacollapse.atomic import atomic_path, sha256_file
from metacollapse.episodes import (
    EpisodeSpec,
    check_spec,
    fixed_episode_indices,
    gather_episode,
    sample_episode_indices,
    split_to_device,
)
from metacollapse.evaluation import score_episodes
from metacollapse.models import build_backbone
from metacollapse.protonet import bf16_autocast, embed_episode, episode_loss

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "metacollapse-checkpoint"
CHECKPOINT_VERSION = 1
LOG_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "episodes_per_s"]
TIMING_COLUMNS = ["seconds", "episodes_per_s"]


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used: unreadable, foreign, or from another run."""


@dataclass(frozen=True)
class TrainParams:
    """Everything that determines a training run's numbers (the fingerprint is taken over ``as_dict``)."""

    backbone: dict[str, Any]
    seed: int
    split: str
    episode: EpisodeSpec
    episodes_per_epoch: int
    epochs: int
    lr: float
    lr_decay_every: int
    lr_decay_gamma: float
    bf16: bool
    val_split: str
    val_episode: EpisodeSpec
    val_episodes: int
    val_seed: int

    @classmethod
    def from_dict(cls, params: Mapping[str, Any]) -> TrainParams:
        """Build from the JSON the ``train`` rule passes: ``{"backbone", "seed", "train", "val"}``."""
        try:
            train, val = params["train"], params["val"]
            return cls(
                backbone=dict(params["backbone"]),
                seed=int(params["seed"]),
                split=str(train["split"]),
                episode=EpisodeSpec(int(train["n_way"]), int(train["n_support"]), int(train["n_query"])),
                episodes_per_epoch=int(train["episodes_per_epoch"]),
                epochs=int(train["epochs"]),
                lr=float(train["lr"]),
                lr_decay_every=int(train["lr_decay_every"]),
                lr_decay_gamma=float(train["lr_decay_gamma"]),
                bf16=bool(train.get("bf16", False)),
                val_split=str(val["split"]),
                val_episode=EpisodeSpec(int(val["n_way"]), int(val["n_support"]), int(val["n_query"])),
                val_episodes=int(val["episodes"]),
                val_seed=int(val["seed"]),
            )
        except KeyError as error:
            raise ValueError(f"training parameters lack the key {error}; got {sorted(params)}") from error

    def as_dict(self) -> dict[str, Any]:
        return {
            "backbone": self.backbone,
            "seed": self.seed,
            "train": {
                "split": self.split,
                "n_way": self.episode.n_way,
                "n_support": self.episode.n_support,
                "n_query": self.episode.n_query,
                "episodes_per_epoch": self.episodes_per_epoch,
                "epochs": self.epochs,
                "lr": self.lr,
                "lr_decay_every": self.lr_decay_every,
                "lr_decay_gamma": self.lr_decay_gamma,
                "bf16": self.bf16,
            },
            "val": {
                "split": self.val_split,
                "n_way": self.val_episode.n_way,
                "n_support": self.val_episode.n_support,
                "n_query": self.val_episode.n_query,
                "episodes": self.val_episodes,
                "seed": self.val_seed,
            },
        }


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when available; asking for ``cuda`` without one is an error, not a silent CPU run."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} was requested but torch sees no CUDA device")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device must be auto, cpu or cuda[:N], got {device!r}")
    return torch.device(device)


def checkpoint_name(epoch: int) -> str:
    return f"epoch_{epoch:03d}.pt"


def run_fingerprint(params: TrainParams, data_files: list[Path], device_type: str) -> str:
    """Hash of the parameters, the device type and the bytes of the data a run trains and validates on.

    The device type is part of it because RNG states (the episode generator lives on the device) do not carry
    over between CPU and CUDA: state made on one is discarded, not resumed, on the other.
    """
    digest = hashlib.sha256(json.dumps(params.as_dict(), sort_keys=True).encode())
    digest.update(device_type.encode())
    for path in data_files:
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load and validate a checkpoint; any failure is a ``CheckpointError`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a damaged file; the caller needs one
        raise CheckpointError(
            f"{path}: not a readable torch checkpoint ({type(error).__name__}: {str(error)[:200]})"
        ) from error
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        found = checkpoint.get("format") if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(
            f"{path}: not a metacollapse checkpoint (format {found!r}, expected {CHECKPOINT_FORMAT!r})"
        )
    if checkpoint.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {checkpoint.get('version')!r}, expected {CHECKPOINT_VERSION}"
        )
    missing = {"epoch", "params", "model", "optimizer", "scheduler", "rng", "log", "fingerprint"} - set(checkpoint)
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {sorted(missing)}")
    return checkpoint


def load_model(path: Path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """The backbone stored in a checkpoint, on ``device``, plus the checkpoint dict."""
    checkpoint = load_checkpoint(path)
    model = build_backbone(checkpoint["params"]["backbone"])
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as error:
        raise CheckpointError(
            f"{path}: weights do not fit the backbone {checkpoint['params']['backbone']}: {error}"
        ) from error
    return model.to(device), checkpoint


def _latest_state(state_dir: Path, fingerprint: str) -> dict[str, Any] | None:
    """The newest checkpoint of this run in ``state_dir``; a foreign run's state is discarded."""
    files = sorted(state_dir.glob("epoch_[0-9][0-9][0-9].pt"))
    if not files:
        return None
    checkpoint = load_checkpoint(files[-1])
    if checkpoint["fingerprint"] != fingerprint:
        log.warning("%s holds state of other parameters or data: discarding it and starting afresh", state_dir)
        shutil.rmtree(state_dir)
        return None
    expected = [checkpoint_name(e) for e in range(1, checkpoint["epoch"] + 1)]
    if [f.name for f in files] != expected:
        raise CheckpointError(f"{state_dir}: epochs missing in the resume state; found {[f.name for f in files]}")
    return checkpoint


def _rng_state(generator: torch.Generator) -> dict[str, torch.Tensor]:
    state = {"episodes": generator.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def train(
    params: TrainParams,
    data_dir: Path,
    out_dir: Path,
    device: str = "auto",
    progress: bool | None = None,
) -> pd.DataFrame:
    """Train (or resume) one backbone; return the training log. See the module docstring for the files."""
    from metacollapse.data import load_split

    out_dir = Path(out_dir)
    dev = resolve_device(device)
    state_dir = out_dir / "train_state"
    data_files = [Path(data_dir) / f"{params.split}.npy", Path(data_dir) / f"{params.val_split}.npy"]
    fingerprint = run_fingerprint(params, data_files, dev.type)

    train_array, _ = load_split(Path(data_dir), params.split)
    val_array, _ = load_split(Path(data_dir), params.val_split)
    check_spec(params.episode, train_array.shape[0], train_array.shape[1], f"train split {params.split!r}")
    check_spec(params.val_episode, val_array.shape[0], val_array.shape[1], f"val split {params.val_split!r}")
    train_split = split_to_device(train_array, dev)
    val_split = split_to_device(val_array, dev)
    val_indices = fixed_episode_indices(
        val_array.shape[0], val_array.shape[1], params.val_episode, params.val_episodes, params.val_seed
    )

    torch.manual_seed(params.seed)  # model initialisation
    model = build_backbone(params.backbone).to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=params.lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, params.lr_decay_every, gamma=params.lr_decay_gamma)
    generator = torch.Generator(device=dev).manual_seed(params.seed)  # episode sampling
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True

    rows: list[dict[str, float]] = []
    start = 0
    state = _latest_state(state_dir, fingerprint) if state_dir.exists() else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["rng"]["episodes"])
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["rng"]["cuda"])
        rows = [dict(row) for row in state["log"]]
        start = int(state["epoch"])
        log.info("resuming from %s (epoch %d of %d)", state_dir / checkpoint_name(start), start, params.epochs)

    spec = params.episode
    for epoch in range(start + 1, params.epochs + 1):
        began = time.perf_counter()
        model.train()
        indices = sample_episode_indices(
            train_array.shape[0], train_array.shape[1], spec, params.episodes_per_epoch, generator
        )
        loss_sum = torch.zeros((), device=dev)
        acc_sum = torch.zeros((), device=dev)
        bar = tqdm(
            range(params.episodes_per_epoch),
            desc=f"epoch {epoch}/{params.epochs}",
            unit="ep",
            disable=(not progress) if progress is not None else None,
            leave=False,
        )
        for episode in bar:
            support, query = gather_episode(train_split, indices[episode], spec)
            with bf16_autocast(dev, params.bf16):
                s, q = embed_episode(model, support, query)
            loss, accuracy = episode_loss(s.float(), q.float(), spec.n_way)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()
            acc_sum += accuracy
            if not bar.disable and (episode + 1) % 10 == 0:  # host sync only when someone is watching
                bar.set_postfix(
                    loss=f"{loss_sum.item() / (episode + 1):.3f}", acc=f"{acc_sum.item() / (episode + 1):.3f}"
                )
        train_loss = float(loss_sum) / params.episodes_per_epoch
        train_acc = float(acc_sum) / params.episodes_per_epoch
        train_seconds = time.perf_counter() - began
        val_losses, val_accs = score_episodes(model, val_split, params.val_episode, val_indices, params.bf16)
        val_loss, val_acc = float(val_losses.mean()), float(val_accs.mean())
        lr = optimizer.param_groups[0]["lr"]  # the rate this epoch trained with
        scheduler.step()  # once per epoch: halves the rate every `lr_decay_every` epochs
        row = {
            "epoch": epoch,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "lr": lr,
            "seconds": time.perf_counter() - began,
            "episodes_per_s": params.episodes_per_epoch / train_seconds,
        }
        rows.append(row)
        checkpoint = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "epoch": epoch,
            "fingerprint": fingerprint,
            "params": params.as_dict(),
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": _rng_state(generator),
            "log": rows,
        }
        with atomic_path(state_dir / checkpoint_name(epoch)) as tmp:
            torch.save(checkpoint, tmp)
        log.info(
            "epoch %3d/%d  train loss %.4f acc %.4f  val loss %.4f acc %.4f  lr %.2e  %.1fs  %.1f episodes/s",
            epoch,
            params.epochs,
            train_loss,
            train_acc,
            val_loss,
            val_acc,
            lr,
            row["seconds"],
            row["episodes_per_s"],
        )

    return publish(state_dir, out_dir, params.epochs)


def publish(state_dir: Path, out_dir: Path, epochs: int) -> pd.DataFrame:
    """Expose a finished run: hard-link every epoch into ``checkpoints/`` and write ``train_log.csv``.

    Links cost no disk; where the filesystem refuses them the file is copied. Outputs are touched afterwards so
    their modification times follow their inputs' (Snakemake compares them).
    """
    checkpoints = out_dir / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    # A persisted folder (DVC `persist: true`) may hold epochs of an earlier, longer run: they are not this run's.
    for stale in checkpoints.glob("epoch_[0-9][0-9][0-9].pt"):
        if int(stale.stem.split("_")[1]) > epochs:
            stale.unlink()
    last = load_checkpoint(state_dir / checkpoint_name(epochs))
    for epoch in range(1, epochs + 1):
        source, target = state_dir / checkpoint_name(epoch), checkpoints / checkpoint_name(epoch)
        with atomic_path(target, fsync=False) as tmp:
            try:
                os.link(source, tmp)
            except OSError:
                shutil.copy2(source, tmp)
        os.utime(target)
    frame = pd.DataFrame(last["log"], columns=LOG_COLUMNS)
    with atomic_path(out_dir / "train_log.csv") as tmp:
        frame.to_csv(tmp, index=False, float_format="%.9g")
    return frame


def set_threads(threads: int | None) -> None:
    """Pin torch's CPU threads (Snakemake's ``threads``); results on CPU are bitwise only for a fixed count."""
    if threads:
        torch.set_num_threads(int(threads))
