"""The whole pipeline on the quick preset: every stage, every learner, real Omniglot, real Snakemake."""

from __future__ import annotations

import json
import os
import shutil

import pandas as pd
import pytest
from conftest import snakemake
from PIL import Image

from metacollapse.runs import RUN_COLUMNS

LEARNERS = {"protonet", "matchingnet", "maml", "anil", "classifier", "protonet_head", "relationnet"}


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
    }
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
    metrics = json.loads((quick_run / "reports" / "metrics.json").read_text())
    _, names = runs(quick_run)
    assert sorted(metrics) == names and {"val_acc", "acc_5w1s", "acc_20w5s"} <= set(metrics["conv4"])
    assert (quick_run / "reports" / "plots" / "val_acc_conv4.csv").is_file()


def test_a_second_run_has_nothing_to_do(quick_run):
    result = snakemake(quick_run, "-n", "--configfile", "config/quick.yaml")
    assert "Nothing to be done" in result.stdout + result.stderr


def test_html_report_embeds_the_figures_with_captions(quick_run):
    snakemake(quick_run, "--configfile", "config/quick.yaml", "--report", "report.html")
    html = (quick_run / "report.html").read_text(errors="replace")
    assert "nc1.png" in html and "training.png" in html


@pytest.fixture
def quick_copy(quick_run, tmp_path):
    """A copy of the finished quick run (results linked, not copied; nothing here edits a result in place)."""
    work = tmp_path / "copy"
    shutil.copytree(quick_run, work, copy_function=os.link, ignore=shutil.ignore_patterns("src"))
    shutil.copytree(quick_run / "src", work / "src")
    return work


def planned(workdir, *args):
    out = snakemake(workdir, "-n", "--configfile", "config/quick.yaml", *args).stdout
    return {line.split()[1].rstrip(":") for line in out.splitlines() if line.startswith(("rule ", "localrule "))}


def test_a_code_change_reruns_its_stage_and_what_follows(quick_copy):
    nc = quick_copy / "src" / "metacollapse" / "nc.py"
    nc.write_text(nc.read_text() + "\n# a changed metric module\n")
    assert planned(quick_copy) == {"nc", "aggregate", "figures", "dvc_metrics", "all"}


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
