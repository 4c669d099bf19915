"""The training stage: one run trained for its epochs, resumable at every epoch, and never lost to a failed retrain.

Writes ``<out_dir>/checkpoints/epoch_NNN.pt`` for epochs 0 (the untrained network) to ``epochs`` and
``<out_dir>/train_log.csv``, published from the run's :class:`~metacollapse.checkpoints.RunStore`. All randomness
comes from generators whose states are saved with each epoch, so a resumed run ends bitwise equal to an
uninterrupted one on CPU (timing columns excepted).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from metacollapse.atomic import sha256_file
from metacollapse.checkpoints import RunStore, build_run_learner, read_checkpoint
from metacollapse.data import load_split
from metacollapse.device import Runtime
from metacollapse.episodes import (
    EpisodeIndices,
    EpisodeSpec,
    check_spec,
    fixed_episode_indices,
    load_device_split,
    sample_batch_indices,
    sample_episode_indices,
    score_episodes,
)
from metacollapse.models import embedding_dim
from metacollapse.runs import check_spec as check_run_spec
from metacollapse.runs import run_columns
from metacollapse.schemas import TRAIN_LOG_COLUMNS
from metacollapse.step import Stepper

log = logging.getLogger(__name__)

TIMING_COLUMNS = ("seconds", "steps_per_s")
#: Seconds between progress lines in a job's log.
LOG_PROGRESS_EVERY = 30.0


def episode_spec(section: Mapping[str, Any]) -> EpisodeSpec:
    return EpisodeSpec(int(section["n_way"]), int(section["n_support"]), int(section["n_query"]))


def run_fingerprint(spec: Mapping[str, Any], data_files: list[Path], runtime: Runtime, code_version: str = "") -> str:
    """Hash of everything a run's numbers are a function of: the run spec, the runtime (device type, precision, how
    steps run, deterministic CUDA kernels), the version of the training code (the workflow passes the digest of the
    modules the stage runs) and the bytes of the data the run trains and validates on.

    A finished state of the same fingerprint is republished instead of retrained; anything else trains afresh.
    """
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode())
    digest.update(f"{runtime.describe()}/{code_version}".encode())
    for path in data_files:
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


@dataclass
class Session:
    """Everything one training job holds: data on the device, the learner, its optimizer and its generators."""

    spec: dict[str, Any]
    runtime: Runtime
    learner: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator
    train_split: torch.Tensor
    class_ids: torch.Tensor
    train_shape: EpisodeSpec | None  # None for learners trained on mini-batches
    val_split: torch.Tensor
    val_shape: EpisodeSpec
    val_indices: EpisodeIndices
    columns: dict[str, Any]

    @property
    def name(self) -> str:
        return self.spec["name"]

    @property
    def epochs(self) -> int:
        return int(self.spec["train"]["epochs"])

    @property
    def steps(self) -> int:
        return int(self.spec["train"]["steps_per_epoch"])

    @property
    def meta_batch(self) -> int:
        return int(self.spec["train"].get("meta_batch", 1))

    def validate(self) -> tuple[float, float]:
        losses, accuracies = score_episodes(self.learner, self.val_split, self.val_shape, self.val_indices)
        return float(losses.mean()), float(accuracies.mean())

    def rng_state(self) -> dict[str, torch.Tensor]:
        state = {"sampling": self.generator.get_state(), "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state()
        return state

    def restore(self, state: Mapping[str, Any], weights: Path) -> None:
        self.learner.load_state_dict(read_checkpoint(weights)["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["rng"]["sampling"])
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["rng"]["cuda"])


def setup(spec: dict[str, Any], data_dir: Path, runtime: Runtime) -> Session:
    """Data on the device, the freshly initialised learner, its optimizer, schedule and sampling generator."""
    train_cfg, val_cfg = spec["train"], spec["val"]
    dev = runtime.device
    train_split = load_device_split(data_dir, train_cfg["split"], dev, train_cfg.get("images_per_class"))
    val_split = load_device_split(data_dir, val_cfg["split"], dev)
    n_classes, per_class = train_split.shape[:2]
    val_shape = episode_spec(val_cfg)
    check_spec(val_shape, *val_split.shape[:2], f"run {spec['name']!r}: val episodes on split {val_cfg['split']!r}")

    torch.manual_seed(int(spec["seed"]))  # model initialisation
    learner = runtime.place(build_run_learner(spec, n_classes))
    class_ids = learner.train_class_ids()
    class_ids = torch.arange(n_classes, device=dev) if class_ids is None else class_ids
    train_shape = None
    if learner.episodic:
        train_shape = episode_spec(train_cfg)
        check_spec(train_shape, len(class_ids), per_class, f"run {spec['name']!r}: training episodes")
    optimizer = torch.optim.Adam(
        learner.parameters(), lr=float(train_cfg["lr"]), weight_decay=float(train_cfg.get("weight_decay", 0.0))
    )
    scheduler = torch.optim.lr_scheduler.StepLR(
        optimizer, int(train_cfg["lr_decay_every"]), gamma=float(train_cfg["lr_decay_gamma"])
    )
    return Session(
        spec=spec,
        runtime=runtime,
        learner=learner,
        optimizer=optimizer,
        scheduler=scheduler,
        generator=torch.Generator(device=dev).manual_seed(int(spec["seed"])),  # episode / batch sampling
        train_split=train_split,
        class_ids=class_ids,
        train_shape=train_shape,
        val_split=val_split,
        val_shape=val_shape,
        val_indices=fixed_episode_indices(  # on the device once: no copy per validation episode
            *val_split.shape[:2], val_shape, int(val_cfg["episodes"]), int(val_cfg["seed"])
        ).to(dev),
        columns={
            **run_columns(spec),
            "precision": runtime.precision,
            "n_params": sum(p.numel() for p in learner.backbone.parameters()),
            "dim": embedding_dim(learner.backbone),
        },
    )


def _resume_state(session: Session, rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "optimizer": session.optimizer.state_dict(),
        "scheduler": session.scheduler.state_dict(),
        "rng": session.rng_state(),
        "log": rows,
    }


def start_or_resume(session: Session, store: RunStore, n_classes: int) -> list[dict[str, Any]]:
    """The log rows so far: restored from the newest usable resume state, or epoch 0 validated and saved."""
    state = store.resume()
    if state is not None:
        epoch = int(state["epoch"])
        session.restore(state, store.weights(epoch))
        log.info("resuming run %s from epoch %d of %d", session.name, epoch, session.epochs)
        return [dict(row) for row in state["log"]]
    store.start()
    val_loss, val_acc = session.validate()
    rows = [{**session.columns, "epoch": 0, "val_loss": val_loss, "val_acc": val_acc}]
    store.save(session.learner, session.spec, 0, n_classes, _resume_state(session, rows))
    log.info("run %s epoch   0/%d  val loss %.4f acc %.4f (untrained)", session.name, session.epochs, val_loss, val_acc)
    return rows


def _batches(session: Session) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of steps, drawn up front: per step the (classes, images) indices of its ``meta_batch`` episodes
    or of its mini-batch, as :class:`~metacollapse.step.Stepper` takes them."""
    s, per_class = session, session.train_split.shape[1]
    if s.train_shape is not None:
        drawn = sample_episode_indices(len(s.class_ids), per_class, s.train_shape, s.steps * s.meta_batch, s.generator)
        classes = s.class_ids[drawn.classes]  # positions -> split class ids
        for rows in (slice(step * s.meta_batch, (step + 1) * s.meta_batch) for step in range(s.steps)):
            yield classes[rows], drawn.images[rows]
    else:
        batch_size = int(s.spec["train"]["batch_size"])
        yield from zip(*sample_batch_indices(s.class_ids, per_class, batch_size, s.steps, s.generator), strict=True)


def train_epoch(session: Session, stepper: Stepper, epoch: int, run_began: float, steps_before: int) -> dict[str, Any]:
    """One epoch of optimizer steps and its validation; returns the epoch's log row."""
    s = session
    began = shown = time.perf_counter()
    s.learner.train()
    stepper.reset()
    loss_sum, acc_sum = stepper.totals()
    for step, (classes, images) in enumerate(_batches(s), start=1):
        stepper.step(classes, images)
        if time.perf_counter() - shown >= LOG_PROGRESS_EVERY:
            loss, accuracy = loss_sum.item() / step, acc_sum.item() / step  # waits for the queued steps to run
            shown = time.perf_counter()
            rate = (steps_before + step) / (shown - run_began)
            left = (s.epochs - epoch + 1) * s.steps - step
            log.info(
                "epoch %d/%d: %d/%d steps, %.2f steps/s, loss %.4f acc %.4f; run done in about %s",
                *(epoch, s.epochs, step, s.steps, rate, loss, accuracy, _duration(left / rate)),
            )
    if s.runtime.device.type == "cuda":
        torch.cuda.synchronize(s.runtime.device)  # steps are queued, not waited for: the epoch ends when they have run
    train_seconds = time.perf_counter() - began
    val_loss, val_acc = s.validate()
    lr = float(s.optimizer.param_groups[0]["lr"])  # the rate this epoch trained with
    s.scheduler.step()
    return {
        **s.columns,
        "epoch": epoch,
        "train_loss": float(loss_sum) / s.steps,
        "train_acc": float(acc_sum) / s.steps,
        "val_loss": val_loss,
        "val_acc": val_acc,
        "lr": lr,
        "seconds": time.perf_counter() - began,
        "steps_per_s": s.steps / train_seconds,
    }


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{max(minutes, 1)} min"


def train(
    spec: Mapping[str, Any], data_dir: Path, out_dir: Path, runtime: Runtime, code_version: str = ""
) -> pd.DataFrame:
    """Train (or resume, or republish) run ``spec`` into ``out_dir``; return its training log. ``code_version``
    names the training code in the run's fingerprint (:func:`run_fingerprint`)."""
    spec = check_run_spec(spec, "train")
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    data_files = [data_dir / f"{spec[part]['split']}.npy" for part in ("train", "val")]
    for path in data_files:
        if not path.is_file():
            load_split(data_dir, path.stem)  # raises the loader's error, naming the file and the fix
    store = RunStore(out_dir, run_fingerprint(spec, data_files, runtime, code_version))
    epochs = int(spec["train"]["epochs"])
    if store.finished(epochs) is not None:
        log.info("run %s: this configuration already finished (%s): publishing it again", spec["name"], store.folder)
        return store.republish(epochs)
    session = setup(spec, data_dir, runtime)
    n_classes = int(session.train_split.shape[0])
    rows = start_or_resume(session, store, n_classes)
    shape = session.train_shape or int(spec["train"]["batch_size"])
    stepper = Stepper(
        session.learner, session.optimizer, session.train_split, shape, session.meta_batch, runtime.compile
    )
    run_began, first = time.perf_counter(), len(rows)
    for epoch in range(first, epochs + 1):
        row = train_epoch(session, stepper, epoch, run_began, (epoch - first) * session.steps)
        rows.append(row)
        store.save(session.learner, spec, epoch, n_classes, _resume_state(session, rows))
        log.info(
            "run %s epoch %3d/%d  train loss %.4f acc %.4f  val loss %.4f acc %.4f  lr %.2e  %.1fs",
            *(spec["name"], epoch, epochs, row["train_loss"], row["train_acc"], row["val_loss"], row["val_acc"]),
            *(row["lr"], row["seconds"]),
        )
    return store.publish(rows, list(TRAIN_LOG_COLUMNS))
