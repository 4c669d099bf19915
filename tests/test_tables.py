"""Tests of metacollapse.tables: the one reader, older tables, the aggregate, the runs table and DVC metrics."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from metacollapse.cli import main
from metacollapse.schemas import FEWSHOT_COLUMNS, NC_COLUMNS, TRAIN_LOG_COLUMNS
from metacollapse.tables import (
    concat_tables,
    read_table,
    varying_keys,
    write_dvc_metrics,
    write_runs_table,
)

RUN = {"run": "conv4-s0", "learner": "protonet", "backbone": "conv4", "width": 64, "seed": 0}


def _train_log(run=RUN, epochs=(0, 1, 2), legacy=False) -> pd.DataFrame:
    rows = []
    for e in epochs:
        train = (math.nan, math.nan) if e == 0 else (1.0 / e, 1 - 0.1 / e)
        rows.append((*run.values(), "fp32", 111936, 64, e, *train, 1.1 / (e + 1), 0.9, 1e-3, 2.0, 40.0))
    df = pd.DataFrame(rows, columns=list(TRAIN_LOG_COLUMNS))
    return df.rename(columns={"steps_per_s": "episodes_per_s"}) if legacy else df


def _fewshot(run=RUN, split: str | None = "test") -> pd.DataFrame:
    rows = [(*run.values(), split, w, s, 15, 600, 0.9, 0.01) for w in (5, 20) for s in (1, 5)]
    df = pd.DataFrame(rows, columns=list(FEWSHOT_COLUMNS))
    return df.drop(columns="split") if split is None else df


def _nc(run=RUN, legacy=False) -> pd.DataFrame:
    rows = [
        (*run.values(), e, "test_classes", "eval", "embedding", "all", m, 0.5 / (e + 1), math.nan, 2.0, 0.4, 0.6)
        for e in (0, 1)
        for m in ("nc1", "cdnv")
    ]
    df = pd.DataFrame(rows, columns=list(NC_COLUMNS))
    return df.drop(columns=["layer", "ci_low", "ci_high"]) if legacy else df


def _csv(df: pd.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    return path


# ---------------------------------------------------------------------------------------------- reader


def test_read_table_types_columns_and_keeps_other_columns_as_text(tmp_path: Path) -> None:
    path = _csv(_train_log().assign(config_precision="bf16"), tmp_path / "log.csv")
    log = read_table(path, "train_log")
    assert list(log.columns) == [*TRAIN_LOG_COLUMNS, "config_precision"]
    assert log["epoch"].dtype == np.int64 and log["n_params"].dtype == np.int64
    assert log["width"].dtype == np.float64 and log["val_acc"].dtype == np.float64
    assert math.isnan(log["train_loss"].iloc[0]) and log["config_precision"].tolist() == ["bf16"] * 3


def test_a_bad_value_is_named_with_file_column_line_and_value(tmp_path: Path) -> None:
    few = _fewshot().astype({"accuracy": str})
    few.loc[2, "accuracy"] = "high"
    path = _csv(few, tmp_path / "fewshot_accuracy.csv")
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: column 'accuracy'.*'high' on line 4"):
        read_table(path, "fewshot")
    few = _fewshot().astype({"n_way": str})
    few.loc[0, "n_way"] = "5.5"
    with pytest.raises(ValueError, match=r"column 'n_way' has a non-integer value '5.5' on line 2"):
        read_table(_csv(few, tmp_path / "b.csv"), "fewshot")


@pytest.mark.parametrize(("kind", "column"), [("nc", "null"), ("nc", "bn_mode"), ("train_log", "val_acc")])
def test_a_missing_column_is_named_with_the_file(tmp_path: Path, kind: str, column: str) -> None:
    table = _nc() if kind == "nc" else _train_log()
    path = _csv(table.drop(columns=[column]), tmp_path / "t.csv")
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: .* missing column\(s\) '{column}'"):
        read_table(path, kind)


def test_missing_empty_and_unreadable_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"nope\.csv: NC metrics table not found"):
        read_table(tmp_path / "nope.csv", "nc")
    with pytest.raises(ValueError, match="not found"):
        read_table(tmp_path, "nc")  # a folder is not a table
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match=r"empty\.csv: .* is empty"):
        read_table(tmp_path / "empty.csv", "nc")
    (tmp_path / "header.csv").write_text(",".join(NC_COLUMNS) + "\n")
    with pytest.raises(ValueError, match="header but no rows"):
        read_table(tmp_path / "header.csv", "nc")
    (tmp_path / "bad.csv").write_bytes(b"run,epoch\n\xff\xfe\x00bad\n")
    with pytest.raises(ValueError, match=r"bad\.csv.*(readable|missing)"):
        read_table(tmp_path / "bad.csv", "train_log")
    with pytest.raises(ValueError, match="unknown table kind 'logs'"):
        read_table(tmp_path / "bad.csv", "logs")


def test_older_tables_read_as_current_ones(tmp_path: Path) -> None:
    nc = read_table(_csv(_nc(legacy=True), tmp_path / "nc.csv"), "nc")
    assert list(nc.columns) == list(NC_COLUMNS)
    assert set(nc["layer"]) == {"embedding"} and nc["ci_low"].isna().all() and nc["ci_high"].isna().all()
    few = read_table(_csv(_fewshot(split=None), tmp_path / "few.csv"), "fewshot")
    assert list(few.columns) == list(FEWSHOT_COLUMNS) and set(few["split"]) == {"test"}
    log = read_table(_csv(_train_log(legacy=True), tmp_path / "log.csv"), "train_log")
    assert list(log.columns) == list(TRAIN_LOG_COLUMNS) and log["steps_per_s"].tolist()[1:] == [40.0, 40.0]


def test_duplicate_rows_and_conflicting_run_identities_are_rejected(tmp_path: Path) -> None:
    nc = _nc()
    path = _csv(pd.concat([nc, nc.iloc[[0]]]), tmp_path / "nc.csv")
    with pytest.raises(ValueError, match=r"nc\.csv: NC metrics table has duplicate rows for .*'metric': 'nc1'"):
        read_table(path, "nc")
    few = _fewshot()
    few.loc[0, "seed"] = 7
    with pytest.raises(ValueError, match=r"few\.csv: .* gives run 'conv4-s0' several identities"):
        read_table(_csv(few, tmp_path / "few.csv"), "fewshot")


def test_a_resumed_run_that_logged_an_epoch_twice_keeps_its_last_row(tmp_path: Path) -> None:
    log = _train_log()
    again = log.iloc[[2]].assign(val_acc=0.95)
    table = read_table(_csv(pd.concat([log, again]), tmp_path / "log.csv"), "train_log")
    assert table["epoch"].tolist() == [0, 1, 2] and table["val_acc"].iloc[2] == 0.95


# ------------------------------------------------------------------------------------------- aggregate


def test_aggregate_concatenates_sorts_and_brings_older_tables_up_to_date(tmp_path: Path) -> None:
    other = {**RUN, "run": "a-first", "seed": 1}
    inputs = [_csv(_nc(legacy=True), tmp_path / "r1.csv"), _csv(_nc(other), tmp_path / "r2.csv")]
    out = tmp_path / "nc_metrics.csv"
    concat_tables("nc", inputs, out)
    written = pd.read_csv(out)
    assert list(written.columns) == list(NC_COLUMNS)
    assert written["run"].tolist() == ["a-first"] * 4 + ["conv4-s0"] * 4
    assert written["layer"].eq("embedding").all()
    assert written.loc[written["run"] == "conv4-s0", "ci_low"].isna().all()


def test_aggregate_rejects_one_run_in_two_tables_naming_both_files(tmp_path: Path) -> None:
    inputs = [_csv(_fewshot(), tmp_path / "a.csv"), _csv(_fewshot(), tmp_path / "b.csv")]
    with pytest.raises(ValueError, match=r"a\.csv, .*b\.csv: few-shot accuracy table has duplicate rows"):
        concat_tables("fewshot", inputs, tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()


def test_the_aggregate_command_reports_a_bad_table_in_one_line(tmp_path: Path, capsys) -> None:
    bad = _csv(_train_log().drop(columns="dim"), tmp_path / "log.csv")
    assert main(["aggregate", "--kind", "train_log", "--out", str(tmp_path / "out.csv"), str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "log.csv" in err and "'dim'" in err


# ------------------------------------------------------------------------------------------ runs table


def _spec(name: str, wd: float, seed: int, **backbone) -> dict:
    return {
        "name": name,
        "learner": {"name": "protonet"},
        "backbone": {"arch": "conv4", "width": 64, **backbone},
        "seed": seed,
        "train": {"lr": 0.001, "weight_decay": wd, "n_way": 60, "milestones": [20, 40]},
        "val": {"n_way": 5, "seed": 1000},
    }


def test_the_runs_table_flattens_each_spec_with_dots(tmp_path: Path) -> None:
    specs = [_spec("wd0-s0", 0.0, 0), _spec("wd5-s1", 5e-4, 1, norm=None)]
    table = write_runs_table(specs, tmp_path / "runs.csv")
    assert list(table.columns) == [
        "run",
        "learner.name",
        "backbone.arch",
        "backbone.norm",
        "backbone.width",
        "seed",
        "train.lr",
        "train.milestones",
        "train.n_way",
        "train.weight_decay",
        "val.n_way",
        "val.seed",
    ]
    back = read_table(tmp_path / "runs.csv", "runs")
    assert back["run"].tolist() == ["wd0-s0", "wd5-s1"] and back["seed"].tolist() == [0, 1]
    assert back["train.weight_decay"].tolist() == ["0.0", "0.0005"]
    assert back["train.milestones"].tolist() == ["[20,40]"] * 2 and back["backbone.norm"].tolist() == ["", ""]
    assert varying_keys(back) == ["train.weight_decay"]


def test_the_runs_table_command_takes_a_json_list_or_a_file(tmp_path: Path) -> None:
    specs = [_spec("a", 0.0, 0), _spec("b", 0.0, 1)]
    assert main(["runs-table", "--specs", json.dumps(specs), "--out", str(tmp_path / "one.csv")]) == 0
    (tmp_path / "specs.json").write_text(json.dumps(specs))
    assert main(["runs-table", "--specs", f"@{tmp_path / 'specs.json'}", "--out", str(tmp_path / "two.csv")]) == 0
    assert (tmp_path / "one.csv").read_bytes() == (tmp_path / "two.csv").read_bytes()
    assert (tmp_path / "one.csv").read_text().splitlines()[0].startswith("run,learner.name,backbone.arch,")


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        ("[{", "not valid JSON"),
        ("{}", "expected a non-empty list of run specs"),
        ('[{"name": "a"}]', r"run spec 0: missing keys \['learner', 'backbone', 'seed', 'train', 'val'\]"),
    ],
)
def test_the_runs_table_command_rejects_bad_specs_in_one_line(tmp_path: Path, capsys, specs: str, message: str) -> None:
    assert main(["runs-table", "--specs", specs, "--out", str(tmp_path / "runs.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(message, err), err
    assert not (tmp_path / "runs.csv").exists()


def test_run_names_of_the_runs_table_are_unique(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"repeated: \['a'\]"):
        write_runs_table([_spec("a", 0.0, 0), _spec("a", 0.0, 1)], tmp_path / "runs.csv")


# ----------------------------------------------------------------------------------------- DVC metrics


def test_dvc_metrics_name_accuracies_of_other_splits_by_their_split(tmp_path: Path) -> None:
    log = _csv(_train_log(), tmp_path / "log.csv")
    few = _csv(pd.concat([_fewshot(), _fewshot(split="fashion_test")]), tmp_path / "few.csv")
    write_dvc_metrics(log, few, tmp_path / "metrics", tmp_path / "plots")
    metrics = json.loads((tmp_path / "metrics" / "conv4-s0.json").read_text())
    assert metrics["val_acc"] == 90.0 and metrics["acc_5w1s"] == 90.0 and metrics["acc_fashion_test_20w5s"] == 90.0
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["train_loss_conv4-s0.csv", "val_acc_conv4-s0.csv"]
