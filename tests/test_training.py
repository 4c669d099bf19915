"""Training: the loss falls, checkpoints round-trip, a resumed run equals an uninterrupted one bit for bit."""

import shutil

import pandas as pd
import pytest
import torch

import metacollapse
from metacollapse.training import (
    LOG_COLUMNS,
    TIMING_COLUMNS,
    CheckpointError,
    TrainParams,
    load_checkpoint,
    load_model,
    train,
)


def params(epochs=3, arch="conv4", **train_overrides):
    return TrainParams.from_dict(
        {
            "backbone": {"arch": arch},
            "seed": 0,
            "train": {
                "split": "train",
                "n_way": 10,
                "n_support": 3,
                "n_query": 3,
                "episodes_per_epoch": 8,
                "epochs": epochs,
                "lr": 1e-3,
                "lr_decay_every": 2,
                "lr_decay_gamma": 0.5,
                "bf16": False,
                **train_overrides,
            },
            "val": {"split": "val", "n_way": 5, "n_support": 3, "n_query": 5, "episodes": 4, "seed": 1},
        }
    )


def test_training_lowers_the_loss_and_writes_every_epoch(synthetic_data, tmp_path):
    log = train(params(epochs=3), synthetic_data, tmp_path / "run", device="cpu")
    assert list(log.columns) == LOG_COLUMNS and log["epoch"].tolist() == [1, 2, 3]
    assert log["train_loss"].iloc[-1] < log["train_loss"].iloc[0]
    assert log["val_acc"].iloc[-1] > 0.5  # 5-way chance is 0.2
    assert log["lr"].tolist() == pytest.approx([1e-3, 1e-3, 5e-4])  # halved after every 2 epochs
    for epoch in (1, 2, 3):
        assert (tmp_path / "run" / "checkpoints" / f"epoch_{epoch:03d}.pt").is_file()
    assert pd.read_csv(tmp_path / "run" / "train_log.csv")["epoch"].tolist() == [1, 2, 3]


def test_checkpoint_round_trip(synthetic_data, tmp_path):
    train(params(epochs=1), synthetic_data, tmp_path / "run", device="cpu")
    path = tmp_path / "run" / "checkpoints" / "epoch_001.pt"
    checkpoint = load_checkpoint(path)
    assert checkpoint["epoch"] == 1 and checkpoint["params"] == params(epochs=1).as_dict()
    assert {"optimizer", "scheduler", "rng", "log"} <= set(checkpoint)
    model, _ = load_model(path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, checkpoint["model"][name]), name


def test_resumed_run_ends_bitwise_equal_to_an_uninterrupted_one(synthetic_data, tmp_path):
    full = train(params(epochs=3), synthetic_data, tmp_path / "full", device="cpu")

    # Interrupted run: as if killed during epoch 3, after Snakemake deleted the declared outputs.
    part = tmp_path / "part"
    train(params(epochs=3), synthetic_data, part, device="cpu")
    (part / "train_state" / "epoch_003.pt").unlink()
    shutil.rmtree(part / "checkpoints")
    (part / "train_log.csv").unlink()
    resumed = train(params(epochs=3), synthetic_data, part, device="cpu")

    pd.testing.assert_frame_equal(full.drop(columns=TIMING_COLUMNS), resumed.drop(columns=TIMING_COLUMNS))
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "epoch_003.pt")
    b = load_checkpoint(part / "checkpoints" / "epoch_003.pt")
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name


def test_state_of_other_parameters_is_discarded_not_resumed(synthetic_data, tmp_path):
    train(params(epochs=2, lr=1e-2), synthetic_data, tmp_path / "run", device="cpu")
    fresh = train(params(epochs=2), synthetic_data, tmp_path / "fresh", device="cpu")
    rerun = train(params(epochs=2), synthetic_data, tmp_path / "run", device="cpu")
    pd.testing.assert_frame_equal(fresh.drop(columns=TIMING_COLUMNS), rerun.drop(columns=TIMING_COLUMNS))


def test_corrupt_and_foreign_checkpoints_get_a_clear_error(tmp_path):
    corrupt = tmp_path / "epoch_001.pt"
    corrupt.write_bytes(b"\x80\x02not a checkpoint")
    with pytest.raises(CheckpointError, match=r"epoch_001\.pt: not a readable torch checkpoint"):
        load_checkpoint(corrupt)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match=r"foreign\.pt: not a metacollapse checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_a_checkpoint_without_a_backbone_spec_is_an_error_naming_it(synthetic_data, tmp_path):
    train(params(epochs=1), synthetic_data, tmp_path / "run", device="cpu")
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoints" / "epoch_001.pt")
    assert checkpoint["environment"] == {
        "device": "cpu",
        "torch": torch.__version__,
        "metacollapse": metacollapse.__version__,
    }
    del checkpoint["params"]["backbone"]
    torch.save(checkpoint, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match=r"edited\.pt: checkpoint params hold no backbone spec"):
        load_model(tmp_path / "edited.pt")


def test_temporaries_of_a_killed_save_are_removed_by_the_next_run(synthetic_data, tmp_path):
    state = tmp_path / "run" / "train_state"
    state.mkdir(parents=True)
    # What atomic_path leaves when SIGKILL lands inside torch.save; a real checkpoint-like file stays.
    debris = state / ".epoch_002.pt.4242-0123456789ab.tmp.pt"
    debris.write_bytes(b"half a checkpoint")
    keep = state / "notes.txt"
    keep.write_text("mine")
    train(params(epochs=2), synthetic_data, tmp_path / "run", device="cpu")
    assert not debris.exists() and keep.exists()
    assert sorted(p.name for p in state.glob("epoch_*.pt")) == ["epoch_001.pt", "epoch_002.pt"]


def test_without_a_terminal_progress_goes_to_the_log_and_leaves_the_numbers_alone(
    synthetic_data, tmp_path, monkeypatch, caplog
):
    monkeypatch.setattr("metacollapse.training.LOG_PROGRESS_EVERY", 0.0)  # a line after every episode
    with caplog.at_level("INFO", logger="metacollapse.training"):
        logged = train(params(epochs=1), synthetic_data, tmp_path / "logged", device="cpu")  # pytest: no tty
    lines = [r.getMessage() for r in caplog.records if "episodes/s, loss" in r.getMessage()]
    assert len(lines) == 8 and lines[-1].startswith("epoch 1/1: 8/8 episodes")
    caplog.clear()
    with caplog.at_level("INFO", logger="metacollapse.training"):
        quiet = train(params(epochs=1), synthetic_data, tmp_path / "quiet", device="cpu", progress=False)
    assert not [r for r in caplog.records if "episodes/s, loss" in r.getMessage()]
    assert any(r.getMessage().startswith("epoch   1/1  train loss") for r in caplog.records)  # the epoch line
    pd.testing.assert_frame_equal(logged.drop(columns=TIMING_COLUMNS), quiet.drop(columns=TIMING_COLUMNS))


def test_asking_for_cuda_without_one_is_an_error(synthetic_data, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="no CUDA device"):
        train(params(epochs=1), synthetic_data, tmp_path / "run", device="cuda")


def test_a_shorter_rerun_leaves_no_checkpoints_of_the_longer_one(synthetic_data, tmp_path):
    train(params(epochs=3), synthetic_data, tmp_path / "run", device="cpu")
    train(params(epochs=2), synthetic_data, tmp_path / "run", device="cpu")
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["epoch_001.pt", "epoch_002.pt"]
