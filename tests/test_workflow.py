"""The Snakemake workflow: real Snakemake runs on the real Omniglot mirror."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import make_workspace, snakemake

EXPECTED_CLASSES = {"train": 4112, "val": 688, "trainval": 4800, "test": 1692}


def test_prepare_renders_every_split_from_the_mirror(prepared_workspace):
    for split, classes in EXPECTED_CLASSES.items():
        array = np.load(prepared_workspace / "data" / "processed" / f"{split}.npy", mmap_mode="r")
        assert array.shape == (classes, 20, 28, 28) and array.dtype == np.uint8
        names = (prepared_workspace / "data" / "processed" / f"{split}_classes.txt").read_text().split()
        assert len(names) == classes and names[0].count("/") == 2


def test_data_info_reports_the_vinyals_counts(prepared_workspace):
    result = subprocess.run(
        [sys.executable, "-m", "metacollapse.cli", "data-info", "data/processed"],
        cwd=prepared_workspace,
        capture_output=True,
        text=True,
        check=True,
    )
    info = json.loads(result.stdout)
    assert {split: info[split]["classes"] for split in EXPECTED_CLASSES} == EXPECTED_CLASSES
    for split in EXPECTED_CLASSES:
        assert info[split]["images_per_class"] == 20 and info[split]["image_shape"] == [28, 28]


def test_a_rerun_of_the_data_stage_does_nothing(prepared_workspace, omniglot_mirror):
    before = {p: p.stat().st_mtime_ns for p in (prepared_workspace / "data").rglob("*.npy")}
    result = snakemake(prepared_workspace, "prepare", "--config", f"omniglot_mirror={omniglot_mirror}")
    assert "Nothing to be done" in result.stdout + result.stderr
    assert before == {p: p.stat().st_mtime_ns for p in (prepared_workspace / "data").rglob("*.npy")}


@pytest.mark.parametrize("configfile", ["config/config.yaml", "config/quick.yaml"])
def test_dry_run_builds_the_whole_dag(tmp_path, configfile):
    workdir = make_workspace(tmp_path)
    result = snakemake(workdir, "-n", "--configfile", configfile)
    out = result.stdout + result.stderr
    for rule in ("download", "prepare", "train", "evaluate", "dump_features", "nc_metrics", "figures"):
        assert f"rule {rule}:" in out or f"\n{rule} " in out, rule


def test_paper_config_dumps_features_for_every_epoch_of_both_backbones(tmp_path):
    workdir = make_workspace(tmp_path)
    out = snakemake(workdir, "-n", "--quiet", "rules").stdout
    counts = {
        line.split()[0]: int(line.split()[1])
        for line in out.splitlines()
        if line[:1].isalpha() and len(line.split()) == 2 and line.split()[1].isdigit()
    }
    assert counts["train"] == 2 and counts["dump_features"] == 200 and counts["nc_metrics"] == 200


def test_lint_is_clean(tmp_path):
    workdir = make_workspace(tmp_path)
    result = snakemake(workdir, "--lint", check=False)
    assert "Congratulations" in result.stdout + result.stderr, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("override", "named"),
    [("colour=blue", "colour"), ("device=tpu", "tpu"), ("seed=-1", "-1")],
)
def test_a_bad_config_stops_the_run_naming_the_value(tmp_path, override, named):
    workdir = make_workspace(tmp_path)
    result = snakemake(workdir, "-n", "--config", override, check=False)
    assert result.returncode != 0
    assert named in result.stdout + result.stderr
