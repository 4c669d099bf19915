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


@pytest.mark.parametrize("configfile", ["config/config.yaml", "config/quick.yaml", "config/cpu_conv4.yaml"])
def test_dry_run_builds_the_whole_dag(tmp_path, configfile):
    workdir = make_workspace(tmp_path)
    result = snakemake(workdir, "-n", "--configfile", configfile)
    out = result.stdout + result.stderr
    for rule in ("download", "prepare", "train", "evaluate", "dump_features", "nc_metrics", "figures"):
        assert f"rule {rule}:" in out or f"\n{rule} " in out, rule


def job_counts(workdir, *args: str) -> dict[str, int]:
    """Jobs per rule of a dry run, from Snakemake's job-stats table."""
    out = snakemake(workdir, "-n", "--quiet", "rules", *args).stdout
    return {
        line.split()[0]: int(line.split()[1])
        for line in out.splitlines()
        if line[:1].isalpha() and len(line.split()) == 2 and line.split()[1].isdigit()
    }


def dry_run_resources(workdir, *args: str) -> dict[str, set[str]]:
    """Rule -> the distinct `resources:` lines Snakemake resolved for its jobs in a dry run."""
    out = snakemake(workdir, "-n", *args).stdout
    found: dict[str, set[str]] = {}
    rule = None
    for line in out.splitlines():
        if line.startswith(("rule ", "localrule ")):
            rule = line.split()[1].rstrip(":")
        elif line.strip().startswith("resources:") and rule:
            found.setdefault(rule, set()).add(line.strip())
    return found


def test_paper_config_dumps_features_for_every_epoch_of_both_backbones(tmp_path):
    counts = job_counts(make_workspace(tmp_path))
    assert counts["train"] == 2 and counts["dump_features"] == 200 and counts["nc_metrics"] == 200


def test_a_preset_drops_an_inherited_backbone_by_setting_it_to_null(tmp_path):
    workdir = make_workspace(tmp_path)
    (workdir / "one.yaml").write_text("backbones: {resnet18: null}\n")
    counts = job_counts(workdir, "--configfile", "one.yaml")
    assert counts["train"] == 1 and counts["evaluate"] == 1 and counts["dump_features"] == 100
    (workdir / "none.yaml").write_text("backbones: {resnet18: null, conv4: null}\n")
    result = snakemake(workdir, "-n", "--configfile", "none.yaml", check=False)
    assert result.returncode != 0 and "every entry of `backbones` is null" in result.stdout + result.stderr


def test_the_workstation_profile_gives_training_the_gpu_and_lets_feature_dumps_share_it(tmp_path):
    workdir = make_workspace(tmp_path)
    plain = dry_run_resources(workdir)
    profiled = dry_run_resources(workdir, "--workflow-profile", "workflow/profiles/default")
    for rule in ("train", "evaluate", "dump_features"):
        assert all("gpu=1" in line for line in plain[rule]), (rule, plain[rule])
    for rule in ("train", "evaluate"):
        assert all("gpu=1" in line for line in profiled[rule]), (rule, profiled[rule])
    # 200 one-epoch dumps, each mostly process start-up: serialised on the GPU slot they would outlast training.
    assert all("gpu=0" in line for line in profiled["dump_features"]), profiled["dump_features"]


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
