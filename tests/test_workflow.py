"""The Snakemake workflow: real Snakemake runs on the real Omniglot mirror."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, make_workspace, snakemake

EXPECTED_CLASSES = {"train": 4112, "val": 688, "trainval": 4800, "test": 1692}
STUDIES = sorted(f"config/studies/{p.name}" for p in (REPO / "config" / "studies").glob("*.yaml"))


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


@pytest.mark.parametrize("configfile", ["config/config.yaml", "config/quick.yaml", *STUDIES])
def test_dry_run_builds_the_whole_dag(tmp_path, configfile):
    workdir = make_workspace(tmp_path)
    result = snakemake(workdir, "-n", "--configfile", configfile)
    out = result.stdout + result.stderr
    for rule in ("download", "prepare", "train", "evaluate", "features", "nc", "aggregate", "figures"):
        assert f"rule {rule}:" in out or f"\n{rule} " in out, rule


def job_counts(workdir, *args: str) -> dict[str, int]:
    """Jobs per rule of a dry run, from Snakemake's job-stats table."""
    out = snakemake(workdir, "-n", "--quiet", "rules", *args).stdout
    return {
        line.split()[0]: int(line.split()[1])
        for line in out.splitlines()
        if line[:1].isalpha() and len(line.split()) == 2 and line.split()[1].isdigit()
    }


def dry_run_jobs(workdir, *args: str) -> list[dict[str, str]]:
    """Every job of a dry run as {"rule", "wildcards", "resources", ...} (the lines Snakemake prints)."""
    jobs: list[dict[str, str]] = []
    for line in snakemake(workdir, "-n", *args).stdout.splitlines():
        if line.startswith(("rule ", "localrule ")):
            jobs.append({"rule": line.split()[1].rstrip(":")})
        elif jobs and ":" in line and line.startswith("    "):
            key, _, value = line.strip().partition(": ")
            jobs[-1][key] = value
    return jobs


def test_the_paper_protocol_is_one_job_per_run_and_stage(tmp_path):
    counts = job_counts(make_workspace(tmp_path))
    assert counts["train"] == counts["features"] == counts["nc"] == counts["evaluate"] == 2
    assert counts["total"] < 20  # download, prepare, probes, 4 x 2 per run, aggregate, figures, metrics, all


def test_a_sweep_expands_into_named_runs_over_the_defaults(tmp_path):
    workdir = make_workspace(tmp_path)
    (workdir / "ladder.yaml").write_text(
        "runs: {resnet18: null}\n"
        "sweeps:\n"
        "  ladder:\n"
        "    run: {backbone: {arch: conv4}, train: {lr: 0.002}}\n"
        "    grid: {backbone.width: [16, 32], seed: [0, 1, 2]}\n"
        "    name: 'conv4-w{backbone.width}-s{seed}'\n"
    )
    trains = [j for j in dry_run_jobs(workdir, "--configfile", "ladder.yaml") if j["rule"] == "train"]
    runs = sorted(j["wildcards"].removeprefix("run=") for j in trains)
    assert runs == ["conv4", *(f"conv4-w{w}-s{s}" for w in (16, 32) for s in (0, 1, 2))]
    (workdir / "clash.yaml").write_text("sweeps: {s: {grid: {seed: [0, 0]}, name: conv4}}\n")
    result = snakemake(workdir, "-n", "--configfile", "clash.yaml", check=False)
    assert result.returncode != 0 and "run name 'conv4' is defined twice" in result.stdout + result.stderr


def test_an_overlay_drops_an_inherited_run_by_setting_it_to_null(tmp_path):
    workdir = make_workspace(tmp_path)
    (workdir / "one.yaml").write_text("runs: {resnet18: null}\n")
    counts = job_counts(workdir, "--configfile", "one.yaml")
    assert counts["train"] == counts["evaluate"] == counts["features"] == 1
    (workdir / "none.yaml").write_text("runs: {resnet18: null, conv4: null}\n")
    result = snakemake(workdir, "-n", "--configfile", "none.yaml", check=False)
    assert result.returncode != 0 and "no runs" in result.stdout + result.stderr


def test_the_workstation_profile_gives_each_torch_stage_the_gpu(tmp_path):
    """(That download, probes, aggregate, figures and dvc_metrics stay local on a cluster: tests/test_slurm.py.)"""
    jobs = dry_run_jobs(make_workspace(tmp_path), "--workflow-profile", "workflow/profiles/default")
    for job in jobs:
        if job["rule"] in ("train", "evaluate", "features"):
            assert "gpu=1" in job["resources"], job
        elif "resources" in job:
            assert "gpu=" not in job["resources"], job


@pytest.mark.parametrize(
    ("override", "named"),
    [("colour=blue", "colour"), ("device=tpu", "tpu"), ("epochs=0", "0"), ("precision=fp8", "fp8")],
)
def test_a_bad_config_stops_the_run_naming_the_value(tmp_path, override, named):
    workdir = make_workspace(tmp_path)
    result = snakemake(workdir, "-n", "--config", override, check=False)
    assert result.returncode != 0
    assert named in result.stdout + result.stderr
