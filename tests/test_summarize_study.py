"""Tests of tools/summarize_study.py on a synthetic study folder (tables, runs table, Snakemake benchmark files)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pandas as pd
import pytest
from snakemake.benchmark import BenchmarkRecord, write_benchmark_records
from test_figures import _fewshot, _nc_table, _runs, _train_log, _write

REPO = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("summarize_study", REPO / "tools" / "summarize_study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _study(root: Path) -> list[dict]:
    runs = [r for wd in (0.0, 5e-4) for r in _runs([("protonet", "conv4", 64.0, (0, 1, 2))], wd=wd)]
    _write(root / "results", _nc_table(runs, layers=False), _train_log(runs), _fewshot(runs), runs)
    (root / "results" / "figures").mkdir()
    (root / "results" / "figures" / "nc1.png").write_bytes(b"png")
    return runs


def _benchmark(path: Path, seconds: float, rss: float) -> None:
    record = BenchmarkRecord(running_time=seconds, max_rss=rss, cpu_time=2 * seconds)
    record.data_collected = True
    path.parent.mkdir(parents=True, exist_ok=True)
    write_benchmark_records([record], str(path), False)


def test_summary_groups_by_every_varying_config_key_and_names_it_in_a_column(tmp_path: Path) -> None:
    runs = _study(tmp_path / "study")
    table = _tool().summarize(tmp_path / "study", tmp_path / "out")
    assert list(table.columns[:5]) == ["learner", "backbone", "width", "train.weight_decay", "quantity"]
    acc = table[(table["quantity"] == "acc_5w1s") & (table["probe"] == "test")]
    assert acc["train.weight_decay"].tolist() == ["0.0", "0.0005"] and acc["seeds"].tolist() == [3, 3]
    few = _fewshot(runs)
    few = few[(few["split"] == "test") & (few["n_way"] == 5) & (few["n_shot"] == 1)]
    assert acc["mean"].iloc[1] == pytest.approx(100 * few["accuracy"].iloc[3:].mean(), rel=1e-12)
    assert set(table.loc[table["quantity"].str.startswith("acc_"), "probe"]) == {"test", "fashion_test"}
    written = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert len(written) == len(table) and (tmp_path / "out" / "runs.csv").is_file()
    assert (tmp_path / "out" / "figures" / "nc1.png").is_file()


def test_job_times_come_from_snakemake_benchmark_files(tmp_path: Path) -> None:
    runs = _study(tmp_path / "study")
    bench = tmp_path / "study" / "benchmarks"
    _benchmark(bench / "train" / f"{runs[0]['run']}.tsv", 125.0, 900.0)
    _benchmark(bench / "aggregate.tsv", 3.0, 80.0)
    _tool().summarize(tmp_path / "study", tmp_path / "out")
    jobs = pd.read_csv(tmp_path / "out" / "jobs.csv", keep_default_na=False)
    assert jobs.columns.tolist() == ["rule", "run", "seconds", "max_rss_mib", "cpu_seconds"]
    assert jobs[["rule", "run"]].values.tolist() == [["aggregate", ""], ["train", runs[0]["run"]]]
    assert jobs["seconds"].tolist() == [3.0, 125.0] and jobs["max_rss_mib"].tolist() == [80.0, 900.0]
    assert jobs["cpu_seconds"].tolist() == [6.0, 250.0]


def test_a_study_without_benchmark_files_is_summarised_with_a_clear_message(tmp_path: Path, capsys) -> None:
    _study(tmp_path / "study")
    table = _tool().summarize(tmp_path / "study", tmp_path / "out")
    assert not table.empty and not (tmp_path / "out" / "jobs.csv").exists()
    assert "no Snakemake benchmark files" in capsys.readouterr().err


def test_a_study_without_a_runs_table_groups_by_learner_backbone_and_width(tmp_path: Path) -> None:
    _study(tmp_path / "study")
    (tmp_path / "study" / "results" / "runs.csv").unlink()
    table = _tool().summarize(tmp_path / "study", tmp_path / "out")
    assert list(table.columns[:4]) == ["learner", "backbone", "width", "quantity"]
    acc = table[(table["quantity"] == "acc_5w1s") & (table["probe"] == "test")]
    assert acc["seeds"].tolist() == [6] and not math.isnan(acc["ci95"].iloc[0])


def test_summary_has_every_dumped_epoch_and_layer_as_a_mean_over_seeds(tmp_path: Path) -> None:
    runs = _runs([("protonet", "conv4", 64.0, (0, 1, 2))])
    nc = _nc_table(runs, layers=True)
    _write(tmp_path / "study" / "results", nc, _train_log(runs), _fewshot(runs), runs)
    (tmp_path / "study" / "results" / "figures").mkdir()
    table = _tool().summarize(tmp_path / "study", tmp_path / "out")
    rows = table[(table["quantity"] == "cdnv") & (table["set"] == "all")]
    assert set(rows["epoch"]) == set(nc["epoch"]) and set(rows["layer"]) == set(nc.loc[nc["set"] == "all", "layer"])
    block = rows[(rows["layer"] == "block1") & (rows["epoch"] == 1) & (rows["probe"] == "test_classes")]
    source = nc[(nc["metric"] == "cdnv") & (nc["layer"] == "block1") & (nc["epoch"] == 1)]
    source = source[source["probe"] == "test_classes"]
    assert len(block) == 1 and block["seeds"].iloc[0] == 3
    assert block["mean"].iloc[0] == pytest.approx(source["mean"].mean(), rel=1e-12)
