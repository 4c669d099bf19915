"""The whole pipeline on the quick preset: every stage, both backbones, real Omniglot, real Snakemake."""

from __future__ import annotations

import pandas as pd
import yaml
from conftest import snakemake
from PIL import Image


def quick_config(workdir):
    return yaml.safe_load((workdir / "config" / "quick.yaml").read_text())


def test_every_backbone_has_a_checkpoint_per_epoch_and_a_training_log(quick_run):
    config = quick_config(quick_run)
    epochs = config["train"]["epochs"]
    for backbone in config["backbones"]:
        for epoch in range(1, epochs + 1):
            assert (quick_run / "results" / backbone / "checkpoints" / f"epoch_{epoch:03d}.pt").is_file()
        log = pd.read_csv(quick_run / "results" / backbone / "train_log.csv")
        assert log["epoch"].tolist() == list(range(1, epochs + 1))
        assert log[["train_loss", "val_loss"]].notna().all().all()


def test_fewshot_accuracy_table_has_every_setting_with_a_confidence_interval(quick_run):
    config = quick_config(quick_run)
    for backbone in config["backbones"]:
        table = pd.read_csv(quick_run / "results" / backbone / "fewshot_accuracy.csv")
        settings = {(s["n_way"], s["n_shot"]) for s in config["evaluate"]["settings"]}
        assert set(zip(table["n_way"], table["n_shot"], strict=True)) == settings
        assert table["accuracy"].between(0, 1).all() and (table["ci95"] >= 0).all()
        # trained on Omniglot for a few episodes, 5-way 5-shot is already far above the 20% chance level
        five_way = table[(table["n_way"] == 5) & (table["n_shot"] == 5)]["accuracy"].item()
        assert five_way > 0.4


def test_nc_table_covers_every_backbone_epoch_probe_and_metric(quick_run):
    config = quick_config(quick_run)
    table = pd.read_csv(quick_run / "results" / "nc_metrics.csv")
    assert list(table.columns) == ["backbone", "epoch", "probe", "set", "metric", "mean", "std"]
    assert set(table["backbone"]) == set(config["backbones"])
    assert set(table["epoch"]) == set(range(1, config["train"]["epochs"] + 1))
    assert set(table["probe"]) == set(config["features"]["probes"])
    episodic = table[table["probe"] == "train_episodes"]
    assert {"support", "query", "protonet"} <= set(episodic["set"])
    assert {"nc1", "nc2_etf_rownorm", "cdnv"} <= set(episodic[episodic["set"] == "query"]["metric"])
    assert {"nc3", "nc4"} == set(episodic[episodic["set"] == "protonet"]["metric"])
    assert table[table["metric"] == "nc1"]["mean"].gt(0).all()


def test_figures_are_drawn_as_png_and_pdf(quick_run):
    figures = quick_run / "results" / "figures"
    pngs = sorted(figures.glob("*.png"))
    assert len(pngs) >= 12 and len(pngs) == len(list(figures.glob("*.pdf")))
    with Image.open(figures / "nc1.png") as image:
        assert min(image.size) > 300


def test_a_second_run_has_nothing_to_do(quick_run):
    result = snakemake(quick_run, "-n", "--configfile", "config/quick.yaml")
    assert "Nothing to be done" in result.stdout + result.stderr


def test_html_report_embeds_the_figures_with_captions(quick_run):
    snakemake(quick_run, "--configfile", "config/quick.yaml", "--report", "report.html")
    html = (quick_run / "report.html").read_text(errors="replace")
    assert "nc1.png" in html and "training.png" in html
