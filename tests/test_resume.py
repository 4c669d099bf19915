"""A training job killed with SIGKILL mid-run resumes from its last complete epoch and ends bitwise-identical."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import torch
import yaml
from conftest import snakemake, venv_env

from metacollapse.checkpoints import read_checkpoint
from metacollapse.training import TIMING_COLUMNS

EPOCHS = 6
TARGET = "results/conv4/train_log.csv"


def write_resume_config(workdir):
    """An overlay of the quick preset with enough Conv-4 epochs to be killed in the middle."""
    overlay = {"epochs": EPOCHS, "defaults": {"train": {"steps_per_epoch": 6}}}
    (workdir / "config" / "resume.yaml").write_text(yaml.safe_dump(overlay))


def test_sigkilled_snakemake_run_resumes_and_matches_an_uninterrupted_run(quick_workspace, tmp_path_factory):
    workdir = quick_workspace
    write_resume_config(workdir)
    state = workdir / "results" / "conv4" / "train_state"
    args = [TARGET, "--configfile", "config/quick.yaml", "config/resume.yaml"]  # target first: --configfile is nargs

    # 1. Start the real workflow and SIGKILL Snakemake and its job (whole process group) after epoch 2.
    process = subprocess.Popen(
        [sys.executable, "-m", "snakemake", "--cores", "2", *args],
        cwd=workdir,
        env=venv_env(),
        stdout=subprocess.DEVNULL,
        stderr=(workdir / "killed_run.err").open("w"),
        start_new_session=True,
    )
    deadline = time.monotonic() + 600
    while not list(state.glob("*/epoch_002.pt")):
        assert process.poll() is None, (workdir / "killed_run.err").read_text()[-3000:]
        assert time.monotonic() < deadline, "training never reached epoch 2"
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    done_before = sorted(p.name for p in state.glob("*/epoch_*.pt"))
    assert "epoch_002.pt" in done_before and f"epoch_{EPOCHS:03d}.pt" not in done_before
    newest = sorted(state.glob("*/resume_*.pt"))[-1]  # the kill may precede epoch 2's resume state
    resume_epoch = torch.load(newest, weights_only=True)["epoch"]
    assert resume_epoch >= 1
    assert not (workdir / TARGET).exists()

    # 2. Run Snakemake again (after clearing the stale lock, as its message tells a user to).
    snakemake(workdir, "--unlock", "--configfile", "config/quick.yaml", "config/resume.yaml")
    snakemake(workdir, *args)
    train_log = (workdir / "logs" / "train" / "conv4.log").read_text()
    assert f"resuming run conv4 from epoch {resume_epoch} of {EPOCHS}" in train_log, train_log
    resumed_epochs = [line for line in train_log.splitlines() if " epoch " in line and "train loss" in line]
    assert len(resumed_epochs) == EPOCHS - resume_epoch  # only the missing epochs were trained again

    # 3. An uninterrupted run in a second workspace gives the same log and the same final weights, bit for bit.
    reference = tmp_path_factory.mktemp("reference")

    shutil.copytree(
        workdir, reference, dirs_exist_ok=True, ignore=shutil.ignore_patterns("results", ".snakemake", "logs")
    )
    snakemake(reference, *args)
    a = pd.read_csv(workdir / TARGET).drop(columns=list(TIMING_COLUMNS))
    b = pd.read_csv(reference / TARGET).drop(columns=list(TIMING_COLUMNS))
    pd.testing.assert_frame_equal(a, b)
    last = f"results/conv4/checkpoints/epoch_{EPOCHS:03d}.pt"
    resumed, uninterrupted = read_checkpoint(workdir / last), read_checkpoint(reference / last)
    for name, tensor in uninterrupted["model"].items():
        assert torch.equal(resumed["model"][name], tensor), name
