"""The Snakemake workflow: real Snakemake runs on the real Omniglot mirror."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, make_workspace, snakemake, venv_env

from metacollapse.plan import resolve_runtime

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


@pytest.mark.parametrize(
    ("overlay", "line"),
    [
        (
            "sweeps: {w: {run: {backbone: {arch: conv4}}, grid: {backbone.widht: [16, 32]}}}",
            "config sweeps.w: run 'w_widht16': backbone.widht: unknown key; allowed: arch, depth, width",
        ),
        (
            "sweeps: {w: {run: {backbone: {arch: conv4}}, grid: {epochs: [1, 2]}}}",
            "config sweeps.w: run 'w_epochs1': epochs: unknown key; allowed: backbone, learner, seed, train, val",
        ),
        (
            "sweeps: {w: {run: {backbone: {arch: conv4}}, grid: {backbone.width: [16, big]}}}",
            "config sweeps.w: run 'w_widthbig': backbone.width = 'big': expected an integer",
        ),
        ("runs: {conv4: {train: {lr: fast}}}", "config runs.conv4: run 'conv4': train.lr = 'fast': expected a number"),
        (
            "runs: {lu: {backbone: {arch: conv4}, learner: {name: reptile}}}",
            "config runs.lu: run 'lu': learner.name = 'reptile': expected one of protonet, ",
        ),
        (
            "runs: {resnet-18: null}",
            "config runs.resnet-18: null drops nothing, no config file defines run 'resnet-18'; defined: conv4,",
        ),
        (
            "runs: {lo: {backbone: {arch: conv4}, learner: {name: maml, inner_lr: x}}}",
            "metacollapse plan: error: run 'lo': learner.inner_lr = 'x': expected a number",
        ),
        (
            "runs: {cs: {backbone: {arch: conv4}, learner: {name: protonet, class_seed: 5}}}",
            "metacollapse plan: error: run 'cs': learner.class_seed = 5 without learner.classes",
        ),
        ("foo: 1", "config: foo: unknown key; allowed: defaults, deterministic, device, "),
    ],
)
def test_config_mistakes_stop_the_start_with_one_line_naming_the_run_key_and_value(tmp_path, overlay, line):
    workdir = make_workspace(tmp_path)
    (workdir / "overlay.yaml").write_text(overlay + "\n")
    result = snakemake(workdir, "-n", "--configfile", "overlay.yaml", check=False)
    out = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in out and "Building DAG" not in out
    assert any(printed.startswith(line) for printed in out.splitlines()), out[-2000:]


def test_every_problem_of_every_run_is_named_at_once(tmp_path):
    workdir = make_workspace(tmp_path)
    (workdir / "overlay.yaml").write_text(
        "runs: {a: {backbone: {arch: conv4, width: 0}}, b: {backbone: {arch: conv4}, train: {n_way: 1}}}\n"
    )
    out = snakemake(workdir, "-n", "--configfile", "overlay.yaml", check=False).stderr
    assert "config runs.a: run 'a': backbone.width = 0: expected >= 1" in out.splitlines()
    assert "config runs.b: run 'b': train.n_way = 1: expected >= 2" in out.splitlines()


def test_a_cuda_device_this_machine_lacks_stops_the_start_in_one_line(tmp_path):
    import torch

    device = f"cuda:{torch.cuda.device_count()}"
    result = snakemake(make_workspace(tmp_path), "-n", "--config", f"device={device}", check=False)
    errors = [line for line in result.stderr.splitlines() if line.startswith("metacollapse plan: error: ")]
    assert result.returncode != 0 and len(errors) == 1 and device in errors[0] and "Traceback" not in result.stderr


def train_flags(workdir, *args: str) -> set[str]:
    """The device options the train jobs of a dry run would get (their rendered shell commands)."""
    out = snakemake(workdir, "-n", "-p", *args).stdout
    trains = [line for line in out.splitlines() if "metacollapse train" in line]
    return {re.search(r"--device \S+ --precision \S+( --deterministic)?", line).group(0) for line in trains}


def test_the_torch_stages_get_the_runtime_resolved_here_but_on_a_cluster_the_settings_as_written(tmp_path):
    workdir = make_workspace(tmp_path)
    here = resolve_runtime("auto", "auto", deterministic=True)
    assert train_flags(workdir, "--config", "deterministic=True") == {
        f"--device {here['device']} --precision {here['precision']}" + " --deterministic" * here["deterministic"]
    }
    # A submitting host: it neither refuses a GPU it lacks nor resolves `auto` for the nodes.
    cluster = ("--executor", "slurm", "--jobs", "4")
    assert train_flags(workdir, *cluster, "--config", "device=cuda:7") == {"--device cuda:7 --precision auto"}


def test_without_the_package_at_the_start_it_warns_once_and_the_schema_still_checks(tmp_path):
    """A submitting host whose Python lacks torch (here: the system Python)."""
    system_python = Path("/usr/bin/python3")
    check = subprocess.run([system_python, "-c", "import torch"], capture_output=True)
    assert check.returncode != 0, "this test needs a Python without torch at /usr/bin/python3"
    workdir = make_workspace(tmp_path)
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "python").symlink_to(system_python)
    env = venv_env() | {"PATH": f"{shim}{os.pathsep}{venv_env()['PATH']}"}
    command = [sys.executable, "-m", "snakemake", "--cores", "1", "-n", "--configfile", "config/quick.yaml"]
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    warnings = [line for line in out.splitlines() if "metacollapse plan cannot run here" in line]
    assert len(warnings) == 1 and "No module named 'torch'" in warnings[0]
    (workdir / "overlay.yaml").write_text("runs: {conv4: {train: {lr: fast}}}\n")
    result = subprocess.run([*command, "overlay.yaml"], cwd=workdir, capture_output=True, text=True, env=env)
    assert result.returncode != 0 and "train.lr = 'fast': expected a number" in result.stderr


def test_every_rule_logs_and_benchmarks_under_its_own_name(tmp_path):
    jobs = dry_run_jobs(make_workspace(tmp_path), "--configfile", "config/quick.yaml")
    assert {job["rule"] for job in jobs} >= {"download", "prepare", "train", "nc", "aggregate", "figures"}
    for job in jobs:
        if job["rule"] == "all":
            continue
        run = job.get("wildcards", "").removeprefix("run=")
        name = f"{job['rule']}/{run}" if run else job["rule"]
        assert job["log"] == f"logs/{name}.log" and job["benchmark"] == f"benchmarks/{name}.tsv", job


def test_the_figures_are_the_caption_files_of_the_report(tmp_path):
    workdir = make_workspace(tmp_path)
    captions = {p.stem for p in (workdir / "workflow" / "report").glob("*.rst")} - {"workflow"}
    (figures,) = [job for job in dry_run_jobs(workdir) if job["rule"] == "figures"]
    pngs = {Path(p).stem for p in figures["output"].split(", ") if p.endswith(".png")}
    assert pngs == captions


def test_fashion_mnist_is_fetched_only_when_a_config_uses_its_splits(tmp_path):
    workdir = make_workspace(tmp_path)
    counts = job_counts(workdir)  # the default config measures it as a far domain
    assert counts["download_fashion"] == counts["prepare_fashion"] == 1
    (workdir / "omniglot_only.yaml").write_text(
        "evaluate: {far: null}\nfeatures: {probes: {fashion_test_classes: null}}\n"
    )
    assert not {"download_fashion", "prepare_fashion"} & set(job_counts(workdir, "--configfile", "omniglot_only.yaml"))


def test_fashion_mnist_is_fetched_and_prepared_with_a_manifest_by_its_own_rules(tmp_path):
    from omniglot_fakes import debian_fashion_mirror

    workdir = make_workspace(tmp_path)
    mirror = f"fashion_mirror={debian_fashion_mirror()}"
    snakemake(workdir, "data/processed/fashion_test.npy", "--config", mirror)
    processed = workdir / "data" / "processed"
    shapes = {s: np.load(processed / f"{s}.npy", mmap_mode="r").shape for s in ("fashion_train", "fashion_test")}
    assert shapes == {"fashion_train": (10, 6000, 28, 28), "fashion_test": (10, 1000, 28, 28)}
    manifest = json.loads((processed / "fashion_manifest.json").read_text())
    assert (processed / "fashion_version.txt").read_text().strip()
    assert sorted(manifest) == sorted(
        f"data/processed/{s}{suffix}" for s in ("fashion_train", "fashion_test") for suffix in (".npy", "_classes.txt")
    )
    assert not (workdir / "data" / "raw" / "images_background.zip").exists()  # Omniglot is not needed for it
