"""Training: the loss falls, every epoch's weights are kept lean, and a resumed run equals an uninterrupted one."""

import errno
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import torch

import metacollapse
from metacollapse.atomic import atomic_path
from metacollapse.checkpoints import CheckpointError, load_learner, read_checkpoint
from metacollapse.device import setup
from metacollapse.schemas import TRAIN_LOG_COLUMNS
from metacollapse.training import TIMING_COLUMNS, train

TRAIN = {
    "split": "train",
    "n_way": 10,
    "n_support": 3,
    "n_query": 3,
    "steps_per_epoch": 8,
    "epochs": 3,
    "lr": 1e-3,
    "lr_decay_every": 2,
    "lr_decay_gamma": 0.5,
    "batch_size": 30,
}
VAL = {"split": "val", "n_way": 5, "n_support": 3, "n_query": 5, "episodes": 4, "seed": 1}


def spec(name="run", learner="protonet", epochs=3, learner_options=None, **train):
    return {
        "name": name,
        "learner": {"name": learner, **(learner_options or {})},
        "backbone": {"arch": "conv4", "width": 16},
        "seed": 0,
        "train": {**TRAIN, "epochs": epochs, **train},
        "val": VAL,
    }


def fit(data, out, run_spec, precision="fp32", deterministic=False):
    return train(run_spec, data, out, setup("cpu", precision, deterministic=deterministic))


def state_files(out, pattern):
    """Files of the run's training state (one folder per configuration under ``train_state/``)."""
    return sorted(p.name for p in (out / "train_state").glob(f"*/{pattern}"))


def weights(path):
    return read_checkpoint(path)["model"]


def test_training_lowers_the_loss_and_keeps_every_epoch_from_the_untrained_one(synthetic_data, tmp_path):
    log = fit(synthetic_data, tmp_path / "run", spec())
    assert list(log.columns) == list(TRAIN_LOG_COLUMNS) and log["epoch"].tolist() == [0, 1, 2, 3]
    assert log[["run", "learner", "backbone", "width", "seed"]].drop_duplicates().values.tolist() == [
        ["run", "protonet", "conv4", 16, 0]
    ]
    assert log["train_loss"].isna().tolist() == [True, False, False, False]  # epoch 0: validation only
    assert log["train_loss"].iloc[-1] < log["train_loss"].iloc[1]
    assert log["val_acc"].iloc[-1] > max(0.5, log["val_acc"].iloc[0])  # 5-way chance is 0.2
    assert log["lr"].iloc[1:].tolist() == pytest.approx([1e-3, 1e-3, 5e-4])  # halved after every 2 epochs
    assert (log["precision"] == "fp32").all() and (log["dim"] == 16).all()
    assert pd.read_csv(tmp_path / "run" / "train_log.csv")["epoch"].tolist() == [0, 1, 2, 3]
    # once published, the run's state keeps the same weights (hard links) and its log, but no resume states
    assert state_files(tmp_path / "run", "epoch_*.pt") == [f"epoch_00{e}.pt" for e in range(4)]
    assert state_files(tmp_path / "run", "resume_*.pt") == []


def test_an_episodic_learner_on_a_class_subset_draws_its_episodes_from_those_classes(
    synthetic_data, tmp_path, monkeypatch
):
    import metacollapse.step as step
    from metacollapse.learners import class_subset

    seen, gather = [], step.gather_episode

    def recording_gather(split, episode, episode_spec):
        seen.append(episode.classes[0].clone())  # the step reuses its index buffers
        return gather(split, episode, episode_spec)

    monkeypatch.setattr(step, "gather_episode", recording_gather)
    run = spec(learner="protonet_head", epochs=1, learner_options={"classes": 12, "class_seed": 3})
    fit(synthetic_data, tmp_path / "run", run)
    assert len(seen) == TRAIN["steps_per_epoch"]
    # 80 draws of 10 classes from 12: every class of the subset comes up, and none of the other 18
    assert torch.equal(torch.cat(seen).unique(), class_subset(30, 12, 3))
    learner, _ = load_learner(tmp_path / "run" / "checkpoints" / "epoch_001.pt", run)
    assert learner.head.weight.shape == (12, 16)


def test_a_checkpoint_is_the_weights_and_a_few_fields(synthetic_data, tmp_path):
    fit(synthetic_data, tmp_path / "run", spec(epochs=1))
    path = tmp_path / "run" / "checkpoints" / "epoch_001.pt"
    checkpoint = read_checkpoint(path)
    assert checkpoint["epoch"] == 1 and checkpoint["spec"] == spec(epochs=1) and checkpoint["precision"] == "fp32"
    assert checkpoint["environment"] == {
        "device": "cpu",
        "torch": torch.__version__,
        "metacollapse": metacollapse.__version__,
    }
    assert not {"optimizer", "scheduler", "rng", "log"} & set(checkpoint)
    weight_bytes = sum(t.numel() * t.element_size() for t in checkpoint["model"].values())
    assert os.path.getsize(path) <= 1.2 * weight_bytes + 16_384  # + the fixed size of a torch zip container
    learner, _ = load_learner(path, spec(epochs=1))
    for name, tensor in learner.state_dict().items():
        assert torch.equal(tensor, checkpoint["model"][name]), name


def test_a_checkpoint_of_another_run_is_refused_naming_what_differs(synthetic_data, tmp_path):
    fit(synthetic_data, tmp_path / "run", spec(epochs=1))
    other = {**spec(epochs=1, name="wide"), "backbone": {"arch": "conv4", "width": 32}}
    with pytest.raises(CheckpointError, match=r"epoch_001\.pt: made by another run than 'wide'.*backbone\.width"):
        load_learner(tmp_path / "run" / "checkpoints" / "epoch_001.pt", other)


def interrupt_at_epoch(monkeypatch, epoch):
    """Make the run die during ``epoch`` (after its steps, before its weights are saved), like a kill would."""
    import metacollapse.training as training

    real, calls = training.score_episodes, []

    def validate(*args, **kwargs):
        calls.append(1)
        if len(calls) == epoch + 1:  # validation call 1 is epoch 0's
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "score_episodes", validate)


@pytest.mark.parametrize(("learner", "precision"), [("protonet", "bf16"), ("classifier", "fp32")])
def test_a_resumed_run_ends_bitwise_equal_to_an_uninterrupted_one(
    synthetic_data, tmp_path, monkeypatch, precision, learner
):
    full = fit(synthetic_data, tmp_path / "full", spec(learner=learner), precision)
    with monkeypatch.context() as patch:
        interrupt_at_epoch(patch, 3)
        with pytest.raises(KeyboardInterrupt):
            fit(synthetic_data, tmp_path / "part", spec(learner=learner), precision)
    assert state_files(tmp_path / "part", "epoch_*.pt")[-1] == "epoch_002.pt"
    resumed = fit(synthetic_data, tmp_path / "part", spec(learner=learner), precision)
    pd.testing.assert_frame_equal(full.drop(columns=list(TIMING_COLUMNS)), resumed.drop(columns=list(TIMING_COLUMNS)))
    a, b = weights(tmp_path / "full/checkpoints/epoch_003.pt"), weights(tmp_path / "part/checkpoints/epoch_003.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_stopped_during_epoch_1_resumes_from_the_saved_epoch_0(synthetic_data, tmp_path, monkeypatch, caplog):
    full = fit(synthetic_data, tmp_path / "full", spec(epochs=2))
    with monkeypatch.context() as patch:
        interrupt_at_epoch(patch, 1)
        with pytest.raises(KeyboardInterrupt):
            fit(synthetic_data, tmp_path / "part", spec(epochs=2))
    with caplog.at_level("INFO", logger="metacollapse.training"):
        resumed = fit(synthetic_data, tmp_path / "part", spec(epochs=2))
    assert "resuming run run from epoch 0 of 2" in caplog.text
    pd.testing.assert_frame_equal(full.drop(columns=list(TIMING_COLUMNS)), resumed.drop(columns=list(TIMING_COLUMNS)))


def test_a_damaged_newest_epoch_falls_back_to_the_state_before_it(synthetic_data, tmp_path, monkeypatch, caplog):
    full = fit(synthetic_data, tmp_path / "full", spec())
    with monkeypatch.context() as patch:
        interrupt_at_epoch(patch, 3)
        with pytest.raises(KeyboardInterrupt):
            fit(synthetic_data, tmp_path / "part", spec())
    (newest,) = (tmp_path / "part" / "train_state").glob("*/epoch_002.pt")
    newest.write_bytes(newest.read_bytes()[:5000])  # truncated, as a full disk or a kill mid-copy leaves it
    with caplog.at_level("INFO", logger="metacollapse"):
        resumed = fit(synthetic_data, tmp_path / "part", spec())
    assert "resuming run run from epoch 1 of 3" in caplog.text
    pd.testing.assert_frame_equal(full.drop(columns=list(TIMING_COLUMNS)), resumed.drop(columns=list(TIMING_COLUMNS)))
    a, b = weights(tmp_path / "full/checkpoints/epoch_003.pt"), weights(tmp_path / "part/checkpoints/epoch_003.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def forget_outputs(out):
    """What Snakemake does before it reruns a job: delete its declared outputs."""
    shutil.rmtree(out / "checkpoints")
    (out / "train_log.csv").unlink()


def test_a_failed_retrain_loses_nothing_and_the_old_configuration_comes_back_without_training(
    synthetic_data, tmp_path, monkeypatch, caplog
):
    out = tmp_path / "run"
    first = fit(synthetic_data, out, spec())
    before = weights(out / "checkpoints" / "epoch_003.pt")
    forget_outputs(out)
    with monkeypatch.context() as patch:  # an edited config whose retrain dies
        interrupt_at_epoch(patch, 2)
        with pytest.raises(KeyboardInterrupt):
            fit(synthetic_data, out, spec(lr=1e-2))
    assert len(list((out / "train_state").iterdir())) == 2  # the finished run and the interrupted one
    with monkeypatch.context() as patch, caplog.at_level("INFO", logger="metacollapse.training"):
        patch.setattr("metacollapse.training.setup", lambda *a: pytest.fail("the finished run was trained again"))
        again = fit(synthetic_data, out, spec())  # the edit reverted
    assert "already finished" in caplog.text
    pd.testing.assert_frame_equal(first, again)
    after = weights(out / "checkpoints" / "epoch_003.pt")
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert len(list((out / "train_state").iterdir())) == 1  # the abandoned configuration's state is gone


def test_a_finished_replacement_supersedes_the_old_state(synthetic_data, tmp_path):
    out = tmp_path / "run"
    fit(synthetic_data, out, spec())
    (old,) = (out / "train_state").iterdir()
    forget_outputs(out)
    fit(synthetic_data, out, spec(lr=1e-2))
    (new,) = (out / "train_state").iterdir()
    assert new != old and pd.read_csv(out / "train_log.csv")["lr"].iloc[1] == pytest.approx(1e-2)
    published = out / "checkpoints" / "epoch_003.pt"
    assert published.stat().st_ino == (new / "epoch_003.pt").stat().st_ino  # a hard link, not a second copy


def test_bf16_training_is_repeatable_and_close_to_fp32(synthetic_data, tmp_path):
    one = fit(synthetic_data, tmp_path / "one", spec(epochs=2), "bf16")
    two = fit(synthetic_data, tmp_path / "two", spec(epochs=2), "bf16")
    fp32 = fit(synthetic_data, tmp_path / "fp32", spec(epochs=2), "fp32")
    pd.testing.assert_frame_equal(one.drop(columns=list(TIMING_COLUMNS)), two.drop(columns=list(TIMING_COLUMNS)))
    assert (one["precision"] == "bf16").all() and read_checkpoint(tmp_path / "one/checkpoints/epoch_002.pt")[
        "precision"
    ] == "bf16"
    assert not one["train_loss"].iloc[1:].equals(fp32["train_loss"].iloc[1:])  # bf16 really ran
    assert one["train_loss"].iloc[1:].to_numpy() == pytest.approx(fp32["train_loss"].iloc[1:].to_numpy(), rel=0.1)


def test_state_of_another_spec_is_discarded_not_resumed(synthetic_data, tmp_path, monkeypatch):
    with monkeypatch.context() as patch:
        interrupt_at_epoch(patch, 2)
        with pytest.raises(KeyboardInterrupt):
            fit(synthetic_data, tmp_path / "run", spec(lr=1e-2))
    fresh = fit(synthetic_data, tmp_path / "fresh", spec())
    rerun = fit(synthetic_data, tmp_path / "run", spec())
    pd.testing.assert_frame_equal(fresh.drop(columns=list(TIMING_COLUMNS)), rerun.drop(columns=list(TIMING_COLUMNS)))


def test_corrupt_and_foreign_checkpoints_get_a_clear_error(tmp_path):
    corrupt = tmp_path / "epoch_001.pt"
    corrupt.write_bytes(b"\x80\x02not a checkpoint")
    with pytest.raises(CheckpointError, match=r"epoch_001\.pt: not a readable torch checkpoint"):
        read_checkpoint(corrupt)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match=r"foreign\.pt: not a metacollapse weights file"):
        read_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.pt")


def test_temporaries_of_a_killed_save_are_removed_by_the_next_run(synthetic_data, tmp_path):
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    debris = checkpoints / ".epoch_002.pt.4242-0123456789ab.tmp.pt"  # what SIGKILL inside torch.save leaves
    debris.write_bytes(b"half a checkpoint")
    keep = checkpoints / "notes.txt"
    keep.write_text("mine")
    fit(synthetic_data, tmp_path / "run", spec(epochs=1))
    assert not debris.exists() and keep.exists()


def test_progress_lines_go_to_the_log_and_leave_the_numbers_alone(synthetic_data, tmp_path, monkeypatch, caplog):
    quiet = fit(synthetic_data, tmp_path / "quiet", spec(epochs=1))
    monkeypatch.setattr("metacollapse.training.LOG_PROGRESS_EVERY", 0.0)  # a line after every step
    with caplog.at_level("INFO", logger="metacollapse.training"):
        logged = fit(synthetic_data, tmp_path / "logged", spec(epochs=1))
    lines = [r.getMessage() for r in caplog.records if "steps/s, loss" in r.getMessage()]
    assert len(lines) == 8 and lines[-1].startswith("epoch 1/1: 8/8 steps")
    pd.testing.assert_frame_equal(logged.drop(columns=list(TIMING_COLUMNS)), quiet.drop(columns=list(TIMING_COLUMNS)))


def test_asking_for_cuda_without_one_is_an_error(synthetic_data, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="no CUDA device"):
        setup("cuda")


def test_a_shorter_rerun_leaves_no_checkpoints_of_the_longer_one(synthetic_data, tmp_path):
    fit(synthetic_data, tmp_path / "run", spec(epochs=3))
    fit(synthetic_data, tmp_path / "run", spec(epochs=2))
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["epoch_000.pt", "epoch_001.pt", "epoch_002.pt"]


def test_a_full_disk_is_reported_as_such_naming_the_file(tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)], check=True)
    try:
        target = small / "epoch_001.pt"
        with (
            pytest.raises(OSError, match=r"disk full while writing .*epoch_001\.pt") as caught,
            atomic_path(target) as tmp,
        ):
            torch.save({"weights": torch.zeros(100_000)}, tmp)
        assert caught.value.errno == errno.ENOSPC
        assert list(small.iterdir()) == []  # nothing half-written is left
    finally:
        subprocess.run(["umount", "--lazy", str(small)], check=True)


def test_the_deterministic_switch_changes_no_cpu_number(synthetic_data, tmp_path):
    plain = fit(synthetic_data, tmp_path / "plain", spec(epochs=1))
    strict = fit(synthetic_data, tmp_path / "strict", spec(epochs=1), deterministic=True)
    pd.testing.assert_frame_equal(plain.drop(columns=list(TIMING_COLUMNS)), strict.drop(columns=list(TIMING_COLUMNS)))


STEPS = """
import resource, sys, torch
from metacollapse.device import configure
from metacollapse.models import build_backbone
if sys.argv[1] == "stage":
    configure(threads=1)  # as every stage starts
torch.set_num_threads(1)
model = build_backbone({"arch": "conv4"})
images = torch.rand(300, 1, 28, 28)
for step in range(6):
    if step == 3:  # from here on, the pattern of a step is settled
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    model(images).square().mean().backward()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_stages_reuse_freed_memory_instead_of_faulting_it_in_again_each_step():
    faults = {
        mode: int(subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, check=True).stdout)
        for mode in ("system", "stage")
    }
    assert faults["system"] > 1000 and faults["stage"] * 10 < faults["system"], faults
