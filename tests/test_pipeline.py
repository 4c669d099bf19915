"""The whole pipeline on the quick preset: every stage, every learner, real Omniglot, real Snakemake."""

from __future__ import annotations

import json
import os
import shutil

import pandas as pd
import pytest
import torch
from conftest import snakemake
from PIL import Image

from metacollapse.plan import resolve_runtime
from metacollapse.runs import RUN_COLUMNS

LEARNERS = {"protonet", "protonet_cosine", "matchingnet", "relationnet", "maml", "anil", "classifier", "protonet_head"}


def runs(workdir):
    logs = pd.read_csv(workdir / "results" / "train_log.csv")
    return logs, sorted(logs["run"].unique())


def test_every_learner_trains_with_a_checkpoint_per_epoch_from_the_untrained_one(quick_run):
    logs, names = runs(quick_run)
    assert set(logs["learner"]) == LEARNERS and {"conv4", "resnet18"} <= set(names)
    assert set(logs[logs["run"] == "resnet18"]["backbone"]) == {"resnet18"}
    epochs = sorted(logs["epoch"].unique())
    assert epochs[0] == 0 and len(epochs) >= 3
    for run in names:
        for epoch in epochs:
            assert (quick_run / "results" / run / "checkpoints" / f"epoch_{epoch:03d}.pt").is_file()
        assert not list((quick_run / "results" / run / "train_state").glob("*/resume_*.pt"))  # finished: no resume
    assert logs[logs["epoch"] > 0][["train_loss", "val_loss"]].notna().all().all()


def test_fewshot_accuracy_table_has_every_run_and_setting_with_a_confidence_interval(quick_run):
    table = pd.read_csv(quick_run / "results" / "fewshot_accuracy.csv")
    _, names = runs(quick_run)
    assert list(table.columns[: len(RUN_COLUMNS)]) == list(RUN_COLUMNS)
    assert sorted(table["run"].unique()) == names
    assert set(zip(table["n_way"], table["n_shot"], strict=True)) == {(5, 1), (5, 5), (20, 1), (20, 5)}
    assert table["accuracy"].between(0, 1).all() and (table["ci95"] >= 0).all()
    # a few episodes of Omniglot put ProtoNet's 5-way 5-shot far above the 20% chance level
    five_way = table[(table["run"] == "conv4") & (table["n_way"] == 5) & (table["n_shot"] == 5)]["accuracy"].item()
    assert five_way > 0.4


def test_nc_table_covers_every_run_epoch_probe_and_metric_with_null_baselines(quick_run):
    table = pd.read_csv(quick_run / "results" / "nc_metrics.csv")
    logs, names = runs(quick_run)
    assert list(table.columns[: len(RUN_COLUMNS)]) == list(RUN_COLUMNS)
    assert {"bn_mode", "null"} <= set(table.columns)
    assert sorted(table["run"].unique()) == names
    assert set(table["epoch"]) == set(logs["epoch"])  # epoch 0 included
    modes = table.groupby("probe")["bn_mode"].unique().map(list).to_dict()
    assert modes == {
        "train_episodes": ["train"],
        "val_episodes": ["eval"],
        "train_classes": ["eval"],
        "test_classes": ["eval"],
        "train_classes_300": ["eval"],
        "fashion_test_classes": ["eval"],  # the far domain
    }
    layers = table[table["run"] == "resnet18"].groupby("layer")["metric"].count()
    assert set(layers.index) == {"layer1", "layer2", "layer3", "layer4", "embedding"}  # the preset dumps every stage
    assert table["ci_low"].le(table["mean"] + 1e-12).all() and table["ci_high"].ge(table["mean"] - 1e-12).all()
    query = table[(table["probe"] == "train_episodes") & (table["set"] == "query")]
    assert {"nc1", "nc1_paper", "nc2_etf_rownorm", "cdnv"} <= set(query["metric"])
    assert query[query["metric"] == "nc2_etf_rownorm"]["null"].gt(0).all()
    heads = table[table["set"] == "classifier"]
    assert set(heads["learner"]) == {"classifier", "protonet_head"}  # the learners with a real linear classifier
    assert {"nc3", "nc4"} == set(heads["metric"])


def test_figures_and_dvc_metrics_are_written(quick_run):
    figures = quick_run / "results" / "figures"
    pngs = sorted(figures.glob("*.png"))
    assert len(pngs) >= 15 and len(pngs) == len(list(figures.glob("*.pdf")))
    with Image.open(figures / "nc1.png") as image:
        assert min(image.size) > 300
    metrics = {p.stem: json.loads(p.read_text()) for p in (quick_run / "reports" / "metrics").glob("*.json")}
    _, names = runs(quick_run)
    assert sorted(metrics) == names and {"val_acc", "acc_5w1s", "acc_20w5s"} <= set(metrics["conv4"])
    assert "acc_fashion_test_5w1s" in metrics["conv4"]  # the far domain
    assert (quick_run / "reports" / "plots" / "val_acc_conv4.csv").is_file()


def test_a_second_run_has_nothing_to_do(quick_run):
    result = snakemake(quick_run, "-n", "--configfile", "config/quick.yaml")
    assert "Nothing to be done" in result.stdout + result.stderr


def test_html_report_embeds_the_figures_and_tables_with_labels_to_filter_by(quick_run):
    snakemake(quick_run, "--configfile", "config/quick.yaml", "--report", "report.html")
    html = (quick_run / "report.html").read_text(errors="replace")
    assert "nc1.png" in html and "training.png" in html
    for table in ("train_log", "fewshot_accuracy", "nc_metrics", "runs"):
        assert f'"labels": {{"study": "quick", "table": "{table}", "kind": "table"}}' in html
    assert '"labels": {"study": "quick", "figure": "nc1", "kind": "metric over epochs", "metric": "nc1"}' in html
    assert '"labels": {"study": "quick", "figure": "training", "kind": "Training curves", "metric": "several"}' in html


@pytest.fixture
def quick_copy(quick_run, tmp_path):
    """A copy of the finished quick run: results linked (nothing here edits a result in place), but Snakemake's
    records and the runs' training state copied, since jobs that run here rewrite those in place."""
    work = tmp_path / "copy"
    real = shutil.ignore_patterns("src", ".snakemake", "train_state")
    shutil.copytree(quick_run, work, copy_function=os.link, ignore=real)
    shutil.copytree(quick_run / "src", work / "src")
    shutil.copytree(quick_run / ".snakemake", work / ".snakemake")
    for state in (quick_run / "results").glob("*/train_state"):
        shutil.copytree(state, work / state.relative_to(quick_run))
    return work


def planned(workdir, *args):
    out = snakemake(workdir, "-n", "--configfile", "config/quick.yaml", *args).stdout
    return {line.split()[1].rstrip(":") for line in out.splitlines() if line.startswith(("rule ", "localrule "))}


SUMMARIES = {"aggregate", "figures", "dvc_metrics", "all"}


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        ("matmul_conv.py", {"train", "evaluate", "features", "nc", *SUMMARIES}),  # imported by device, lazily
        ("nc.py", {"nc", *SUMMARIES}),
        ("estimate.py", set()),  # no stage imports it
    ],
)
def test_a_code_change_reruns_the_stages_that_import_the_module_and_what_follows(quick_copy, module, expected):
    path = quick_copy / "src" / "metacollapse" / module
    path.write_text(path.read_text() + "\n# an edit\n")
    assert planned(quick_copy) == expected


def test_a_change_to_prepare_s_code_reruns_every_reader_of_the_data_and_undoing_it_retrains_nothing(quick_copy):
    path = quick_copy / "src" / "metacollapse" / "data.py"
    original = path.read_text()
    path.write_text(original + "\n# an edit\n")
    assert {"prepare", "train", "evaluate", "probes", "features"} <= planned(quick_copy)
    path.write_text(original)
    assert planned(quick_copy) <= {"prepare", "prepare_fashion", "all"}  # the data version is today's again


def test_settings_that_resolve_to_the_same_runtime_rerun_nothing(quick_copy):
    same = resolve_runtime("auto", "auto", False)  # what the quick run used
    assert planned(quick_copy, "--config", f"device={same['device']}", f"precision={same['precision']}") == set()
    assert planned(quick_copy, "--config", "deterministic=True", "--set-threads", "train=1") == set()


def test_a_device_this_machine_lacks_stops_the_run_before_it_deletes_anything(quick_copy):
    before = {p: p.stat().st_mtime_ns for p in (quick_copy / "results").rglob("*") if p.is_file()}
    device = f"cuda:{torch.cuda.device_count()}"
    result = snakemake(quick_copy, "--configfile", "config/quick.yaml", "--config", f"device={device}", check=False)
    errors = [line for line in result.stderr.splitlines() if line.startswith("metacollapse plan: error: ")]
    assert result.returncode != 0 and len(errors) == 1 and device in errors[0] and "Traceback" not in result.stderr
    assert {p: p.stat().st_mtime_ns for p in (quick_copy / "results").rglob("*") if p.is_file()} == before


def test_a_deleted_checkpoint_is_remade_by_a_plain_rerun(quick_copy):
    (quick_copy / "results" / "conv4" / "checkpoints" / "epoch_001.pt").unlink()
    assert "train" in planned(quick_copy)


def test_a_failed_retrain_loses_no_finished_run_and_going_back_republishes_it_without_training(quick_copy):
    run = quick_copy / "results" / "conv4"
    shutil.copytree(run, quick_copy / "conv4.copy")  # real copies: this test's jobs touch these files
    shutil.rmtree(run)
    (quick_copy / "conv4.copy").rename(run)
    weights = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()}
    (quick_copy / "bad.yaml").write_text("runs: {conv4: {train: {n_way: 5000}}}\n")  # an edit whose retrain fails
    target = ["--", "results/conv4/train_log.csv"]
    failed = snakemake(quick_copy, "--configfile", "config/quick.yaml", "bad.yaml", *target, check=False)
    log = quick_copy / "logs" / "train" / "conv4.log"
    assert failed.returncode != 0 and "n_way=5000" in log.read_text()
    assert not (run / "checkpoints").exists() or not any((run / "checkpoints").iterdir())  # Snakemake deleted them
    snakemake(quick_copy, "--configfile", "config/quick.yaml", *target)  # the edit undone
    assert "already finished" in log.read_text() and "train loss" not in log.read_text()  # nothing retrained
    assert {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()} == weights


def ran(result):
    """The rules of the jobs a Snakemake run executed."""
    lines = (result.stdout + result.stderr).splitlines()
    return {line.split()[1].rstrip(":") for line in lines if line.startswith(("rule ", "localrule "))}


def damage(path, keep=0.5):
    """Replace ``path`` by a truncated copy (the workspace links its files to the shared run: never write in place)."""
    good = path.read_bytes()
    path.unlink()
    path.write_bytes(good[: int(len(good) * keep)])
    return good


def test_a_damaged_processed_split_is_remade_and_no_run_retrains(quick_copy):
    train = quick_copy / "data" / "processed" / "train.npy"
    good = damage(train)
    checkpoints = {p: p.stat().st_mtime_ns for p in (quick_copy / "results").rglob("*.pt")}
    result = snakemake(quick_copy, "--configfile", "config/quick.yaml")
    assert "data/processed/train.npy" in result.stdout + result.stderr
    assert ran(result) == {"prepare", "all"} and train.read_bytes() == good
    assert {p: p.stat().st_mtime_ns for p in (quick_copy / "results").rglob("*.pt")} == checkpoints
    assert planned(quick_copy) == set()


def test_a_processed_file_rewritten_with_the_same_bytes_is_not_remade_and_its_manifest_learns_the_time(quick_copy):
    """What a cluster executor does to the outputs of a remote job: the manifest records the new time, and keeps its
    own, so that the bookkeeping does not look like new data."""
    train = quick_copy / "data" / "processed" / "train.npy"
    manifest = quick_copy / "data" / "processed" / "omniglot_manifest.json"
    damage(train, keep=1.0)  # the same bytes in a new file: a new mtime
    manifest_mtime = manifest.stat().st_mtime_ns
    assert json.loads(manifest.read_text())["data/processed/train.npy"]["mtime_ns"] != train.stat().st_mtime_ns
    result = snakemake(quick_copy, "--configfile", "config/quick.yaml")
    assert ran(result) <= {"all"}, result.stderr[-3000:]
    assert json.loads(manifest.read_text())["data/processed/train.npy"]["mtime_ns"] == train.stat().st_mtime_ns
    assert manifest.stat().st_mtime_ns == manifest_mtime


def test_a_raw_zip_that_no_longer_verifies_is_downloaded_again_when_prepare_needs_it(quick_copy, omniglot_mirror):
    """A zip that a broken mirror vouched for, then the mirror fixed: a plain run repairs it, retraining nothing."""
    raw = quick_copy / "data" / "raw" / "images_background.zip"
    good = damage(raw)
    damage(quick_copy / "data" / "processed" / "val.npy")  # so that prepare has to run
    result = snakemake(
        quick_copy, "--configfile", "config/quick.yaml", "--config", f"omniglot_mirror={omniglot_mirror}"
    )
    assert "data/raw/images_background.zip does not verify" in result.stdout + result.stderr
    assert ran(result) == {"download", "prepare", "all"} and raw.read_bytes() == good
    assert planned(quick_copy) == set()


def test_the_training_time_estimate_runs_before_training_and_only_then(quick_workspace):
    (quick_workspace / "tiny.yaml").write_text(
        "epochs: 1\n"
        "device: cpu\n"
        "precision: fp32\n"
        "defaults:\n"
        "  train: {n_way: 2, n_support: 1, n_query: 1, steps_per_epoch: 1200}\n"
        "  val: {n_way: 2, n_support: 1, n_query: 1, episodes: 1}\n"
        "runs: {conv4: null, resnet18: null, tiny: {backbone: {arch: conv4, width: 2, depth: 1}}}\n"
    )
    probes = snakemake(quick_workspace, "results/probes.npz", "--configfile", "tiny.yaml")
    training = snakemake(quick_workspace, "results/tiny/train_log.csv", "--configfile", "tiny.yaml")
    assert "This workflow will train" not in probes.stdout + probes.stderr
    assert "This workflow will train 1 run(s) on the CPU" in training.stdout + training.stderr


def test_changing_or_dropping_the_mirror_reruns_and_deletes_nothing(quick_copy, tmp_path):
    raw = sorted((quick_copy / "data" / "raw").iterdir())
    before = {p: p.stat().st_mtime_ns for p in raw}
    # the quick run itself ran without a mirror; its data came from a mirror (the prepared workspace's)
    result = snakemake(quick_copy, "--configfile", "config/quick.yaml", "--config", f"omniglot_mirror={tmp_path}")
    assert "Nothing to be done" in result.stdout + result.stderr
    assert {p: p.stat().st_mtime_ns for p in raw} == before


def test_a_checkpoint_of_another_run_is_refused_by_every_reader(quick_copy):
    ours = quick_copy / "results" / "conv4" / "checkpoints" / "epoch_002.pt"
    ours.unlink()
    shutil.copy(quick_copy / "results" / "resnet18" / "checkpoints" / "epoch_002.pt", ours)
    result = snakemake(
        quick_copy,
        "--configfile",
        "config/quick.yaml",
        "--forcerun",
        "evaluate",
        "features",
        "--",
        "results/conv4/fewshot_accuracy.csv",
        check=False,
    )
    log = (quick_copy / "logs" / "evaluate" / "conv4.log").read_text()
    assert result.returncode != 0 and "made by another run than 'conv4'" in log and "backbone.arch" in log
