"""The training stage: one run's learner, trained for the configured epochs, with exact resume.

Leaves ``<out_dir>/checkpoints/epoch_NNN.pt`` for epochs 0 (the untrained network) to ``epochs`` (weights only,
:mod:`metacollapse.checkpoints`) and ``<out_dir>/train_log.csv``.

Resume. Snakemake deletes a job's declared outputs before it reruns the job, so they cannot be what a restarted
job resumes from. While it trains, the stage keeps everything in the undeclared folder ``<out_dir>/train_state/``:
each epoch's weights, and one rolling ``resume.pt`` with what only resuming needs (optimizer, scheduler, RNG
states, the log so far). When all epochs exist they are published (linked into ``checkpoints/``, then the
state folder is removed, so no file is shared with it afterwards). A job killed at any point restarts from the
last epoch in ``resume.pt`` if that state was made by the same run spec, data, device type and precision (a
fingerprint); otherwise the state is discarded. All randomness comes from generators whose states are saved with
each epoch, so a resumed run ends bitwise equal to an uninterrupted one on CPU (timing columns excepted).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from metacollapse.atomic import atomic_path, remove_temp_files, sha256_file
from metacollapse.checkpoints import build_run_learner, checkpoint_name, read_checkpoint, save_weights
from metacollapse.data import load_split
from metacollapse.device import configure, prepare_model, resolve_device, resolve_precision
from metacollapse.episodes import (
    EpisodeIndices,
    EpisodeSpec,
    check_spec,
    fixed_episode_indices,
    gather_batch,
    gather_episode,
    sample_batch_indices,
    sample_episode_indices,
    split_to_device,
)
from metacollapse.evaluation import score_episodes
from metacollapse.models import embedding_dim
from metacollapse.runs import RUN_COLUMNS, run_columns
from metacollapse.runs import check_spec as check_run_spec

log = logging.getLogger(__name__)

RESUME_FORMAT = "metacollapse-resume"
LOG_COLUMNS = (
    *RUN_COLUMNS,
    "precision",
    "n_params",
    "dim",
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "lr",
    "seconds",
    "episodes_per_s",
)
TIMING_COLUMNS = ("seconds", "episodes_per_s")
#: Seconds between progress lines in a job's log.
LOG_PROGRESS_EVERY = 30.0


def episode_spec(section: Mapping[str, Any]) -> EpisodeSpec:
    return EpisodeSpec(int(section["n_way"]), int(section["n_support"]), int(section["n_query"]))


def run_fingerprint(spec: Mapping[str, Any], data_files: list[Path], device_type: str, precision: str) -> str:
    """Hash of the run spec, device type, precision and the bytes of the data the run trains and validates on.

    The device type is in it because RNG states (the episode generator lives on the device) do not carry over
    between CPU and CUDA; the precision because bf16 and fp32 runs are different numbers.
    """
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode())
    digest.update(f"{device_type}/{precision}".encode())
    for path in data_files:
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def _load_resume(state_dir: Path, fingerprint: str) -> dict[str, Any] | None:
    """The rolling state of this run, or None (absent, foreign or incomplete state is discarded)."""
    path = state_dir / "resume.pt"
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a damaged state is not worth keeping: the run restarts
        log.warning("%s is unreadable (%s): starting afresh", path, error)
        state = None
    if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT or state.get("fingerprint") != fingerprint:
        log.warning("%s holds state of another run spec, data, device or precision: starting afresh", state_dir)
        return None
    missing = [e for e in range(state["epoch"] + 1) if not (state_dir / checkpoint_name(e)).is_file()]
    if missing:
        log.warning("%s lacks the weights of epochs %s: starting afresh", state_dir, missing)
        return None
    return state


def _rng_state(generator: torch.Generator) -> dict[str, torch.Tensor]:
    state = {"sampling": generator.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _progress(began: float, shown: float, done: int, total: int, epoch: int, epochs: int, loss, acc) -> float:
    """A progress line every LOG_PROGRESS_EVERY seconds (reading the running loss needs a host sync)."""
    if time.monotonic() - shown < LOG_PROGRESS_EVERY:
        return shown
    rate = done / (time.perf_counter() - began)
    log.info(
        "epoch %d/%d: %d/%d steps, %.2f steps/s, loss %.4f acc %.4f",
        epoch,
        epochs,
        done,
        total,
        rate,
        loss.item() / done,
        acc.item() / done,
    )
    return time.monotonic()


def train(
    spec: Mapping[str, Any],
    data_dir: Path,
    out_dir: Path,
    device: str = "auto",
    precision: str = "auto",
    deterministic: bool = False,
    threads: int | None = None,
) -> pd.DataFrame:
    """Train (or resume) one run; return its training log. See the module docstring for the files."""
    spec = check_run_spec(spec, "train")
    configure(threads, deterministic)
    out_dir, data_dir = Path(out_dir), Path(data_dir)
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    state_dir = out_dir / "train_state"
    # A job killed inside torch.save leaves its temporary file behind; this job is the only writer here.
    for folder in (state_dir, out_dir / "checkpoints"):
        for path in remove_temp_files(folder):
            log.info("removed %s, left by a killed run", path)
    train_cfg, val_cfg = spec["train"], spec["val"]
    data_files = [data_dir / f"{train_cfg['split']}.npy", data_dir / f"{val_cfg['split']}.npy"]
    fingerprint = run_fingerprint(spec, data_files, dev.type, prec)

    train_array, _ = load_split(data_dir, train_cfg["split"])
    val_array, _ = load_split(data_dir, val_cfg["split"])
    n_classes, per_class = train_array.shape[:2]
    val_spec = episode_spec(val_cfg)
    check_spec(val_spec, *val_array.shape[:2], f"run {spec['name']!r}: val episodes on split {val_cfg['split']!r}")
    train_split = split_to_device(train_array, dev)
    val_split = split_to_device(val_array, dev)
    val_indices = fixed_episode_indices(*val_array.shape[:2], val_spec, int(val_cfg["episodes"]), int(val_cfg["seed"]))

    torch.manual_seed(int(spec["seed"]))  # model initialisation
    learner = prepare_model(build_run_learner(spec, n_classes), dev, prec)
    learner.precision = prec
    class_ids = learner.train_class_ids()
    class_ids = torch.arange(n_classes, device=dev) if class_ids is None else class_ids
    if learner.episodic:
        train_spec = episode_spec(train_cfg)
        check_spec(train_spec, len(class_ids), per_class, f"run {spec['name']!r}: training episodes")
    optimizer = torch.optim.Adam(
        learner.parameters(), lr=float(train_cfg["lr"]), weight_decay=float(train_cfg.get("weight_decay", 0.0))
    )
    scheduler = torch.optim.lr_scheduler.StepLR(
        optimizer, int(train_cfg["lr_decay_every"]), gamma=float(train_cfg["lr_decay_gamma"])
    )
    generator = torch.Generator(device=dev).manual_seed(int(spec["seed"]))  # episode / batch sampling
    steps, epochs = int(train_cfg["episodes_per_epoch"]), int(train_cfg["epochs"])
    meta_batch = int(train_cfg.get("meta_batch", 1))
    columns = {
        **run_columns(spec),
        "precision": prec,
        "n_params": sum(p.numel() for p in learner.backbone.parameters()),
        "dim": embedding_dim(learner.backbone),
    }

    def validate() -> tuple[float, float]:
        losses, accuracies = score_episodes(learner, val_split, val_spec, val_indices)
        return float(losses.mean()), float(accuracies.mean())

    state = _load_resume(state_dir, fingerprint)
    if state is None:
        shutil.rmtree(state_dir, ignore_errors=True)
        state_dir.mkdir(parents=True)
        val_loss, val_acc = validate()
        nan = float("nan")
        rows = [
            {
                **columns,
                "epoch": 0,
                "train_loss": nan,
                "train_acc": nan,
                "val_loss": val_loss,
                "val_acc": val_acc,
                "lr": nan,
                "seconds": nan,
                "episodes_per_s": nan,
            }
        ]
        save_weights(state_dir / checkpoint_name(0), learner, spec, 0, n_classes, dev)
        start = 0
    else:
        start = int(state["epoch"])
        learner.load_state_dict(read_checkpoint(state_dir / checkpoint_name(start))["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["rng"]["sampling"])
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["rng"]["cuda"])
        rows = [dict(row) for row in state["log"]]
        log.info("resuming run %s from epoch %d of %d", spec["name"], start, epochs)

    for epoch in range(start + 1, epochs + 1):
        began = time.perf_counter()
        shown = time.monotonic()
        learner.train()
        if learner.episodic:
            indices = sample_episode_indices(len(class_ids), per_class, train_spec, steps * meta_batch, generator)
            indices = EpisodeIndices(class_ids[indices.classes], indices.images)  # positions -> split class ids
        else:
            batch_classes, batch_images = sample_batch_indices(
                class_ids, per_class, int(train_cfg["batch_size"]), steps, generator
            )
        loss_sum = torch.zeros((), device=dev)
        acc_sum = torch.zeros((), device=dev)
        for step in range(steps):
            optimizer.zero_grad(set_to_none=True)
            if learner.episodic:
                for task in range(meta_batch):  # gradients of the meta-batch's tasks are averaged
                    episode = indices[step * meta_batch + task]
                    support, query = gather_episode(train_split, episode, train_spec)
                    loss, accuracy = learner.episode_loss(support, query, train_spec.n_way, episode.classes[0])
                    (loss / meta_batch).backward()
                    loss_sum += loss.detach() / meta_batch
                    acc_sum += accuracy / meta_batch
            else:
                images = gather_batch(train_split, batch_classes[step], batch_images[step])
                loss, accuracy = learner.batch_loss(images, batch_classes[step])
                loss.backward()
                loss_sum += loss.detach()
                acc_sum += accuracy
            optimizer.step()
            shown = _progress(began, shown, step + 1, steps, epoch, epochs, loss_sum, acc_sum)
        train_seconds = time.perf_counter() - began
        val_loss, val_acc = validate()
        lr = optimizer.param_groups[0]["lr"]  # the rate this epoch trained with
        scheduler.step()
        rows.append(
            {
                **columns,
                "epoch": epoch,
                "train_loss": float(loss_sum) / steps,
                "train_acc": float(acc_sum) / steps,
                "val_loss": val_loss,
                "val_acc": val_acc,
                "lr": lr,
                "seconds": time.perf_counter() - began,
                "episodes_per_s": steps / train_seconds,
            }
        )
        save_weights(state_dir / checkpoint_name(epoch), learner, spec, epoch, n_classes, dev)
        resume = {
            "format": RESUME_FORMAT,
            "epoch": epoch,
            "fingerprint": fingerprint,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": _rng_state(generator),
            "log": rows,
        }
        with atomic_path(state_dir / "resume.pt") as tmp:
            torch.save(resume, tmp)
        row = rows[-1]
        log.info(
            "run %s epoch %3d/%d  train loss %.4f acc %.4f  val loss %.4f acc %.4f  lr %.2e  %.1fs",
            spec["name"],
            epoch,
            epochs,
            row["train_loss"],
            row["train_acc"],
            val_loss,
            val_acc,
            lr,
            row["seconds"],
        )
    return publish(state_dir, out_dir, epochs, rows)


def publish(state_dir: Path, out_dir: Path, epochs: int, rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Expose a finished run: link every epoch's weights into ``checkpoints/``, write the log, drop the state.

    Until the state folder is removed (last), a killed publish is simply redone by the next run of the job.
    """
    checkpoints = out_dir / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    for stale in checkpoints.glob("epoch_[0-9][0-9][0-9].pt"):  # epochs of an earlier, longer run
        if int(stale.stem.split("_")[1]) > epochs:
            stale.unlink()
    for epoch in range(epochs + 1):
        source, target = state_dir / checkpoint_name(epoch), checkpoints / checkpoint_name(epoch)
        with atomic_path(target, fsync=False) as tmp:
            try:
                os.link(source, tmp)
            except OSError:
                shutil.copy2(source, tmp)
        os.utime(target)
    frame = pd.DataFrame(rows, columns=list(LOG_COLUMNS))
    with atomic_path(out_dir / "train_log.csv") as tmp:
        frame.to_csv(tmp, index=False, float_format="%.9g")
    shutil.rmtree(state_dir)
    return frame
