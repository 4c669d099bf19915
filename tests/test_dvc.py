"""DVC versions the workflow's outputs: push from one clone, pull into a fresh one, and Snakemake has nothing to do.

This follows README.md's "Versioning with DVC" section step by step, with a real local remote.
"""

from __future__ import annotations

import json
import shutil
import subprocess

from conftest import REPO, snakemake, venv_env

QUICK = ("--configfile", "config/quick.yaml")


def sh(cwd, *command):
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=venv_env())
    assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


def test_push_then_pull_into_a_fresh_clone_leaves_snakemake_nothing_to_do(quick_run, tmp_path):
    owner, remote = tmp_path / "owner", tmp_path / "remote"
    shutil.copytree(quick_run, owner, ignore=shutil.ignore_patterns(".snakemake", "logs", "report.html"))
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, owner / name)
    shutil.copytree(REPO / ".dvc", owner / ".dvc", ignore=shutil.ignore_patterns("cache", "tmp"))
    sh(owner, "git", "init", "-q")
    sh(owner, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "start")
    # README: set up a remote once, record a workflow run that Snakemake made, commit, push.
    sh(owner, "dvc", "remote", "add", "-d", "storage", str(remote))
    sh(owner, "dvc", "commit", "--force")
    sh(owner, "git", "add", "-A")
    sh(owner, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "results")
    sh(owner, "dvc", "push")
    assert "up to date" in sh(owner, "dvc", "status")

    # Elsewhere: clone, pull, settle file times, and the workflow is complete.
    clone = tmp_path / "clone"
    sh(tmp_path, "git", "clone", "-q", str(owner), str(clone))
    assert not (clone / "results").exists()
    sh(clone, "dvc", "pull")
    for path in ("results/conv4/checkpoints/epoch_002.pt", "results/nc_metrics.csv", "data/processed/train.npy"):
        assert (clone / path).read_bytes() == (owner / path).read_bytes(), path
    snakemake(clone, *QUICK, "--touch", "--forceall")
    result = snakemake(clone, "-n", *QUICK)
    assert "Nothing to be done" in result.stdout + result.stderr
    # the headline numbers are committed, so a reader sees them without pulling
    shown = json.loads(sh(clone, "dvc", "metrics", "show", "--json"))
    assert "conv4" in json.dumps(shown)
    # DVC links checked-out files to its cache instead of copying them (where the file system allows)
    pulled = clone / "results" / "conv4" / "checkpoints" / "epoch_002.pt"
    assert pulled.stat().st_nlink > 1
