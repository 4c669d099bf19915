"""tools/correlation.py: rank correlation of novel-class collapse with few-shot error, on tiny synthetic studies."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("correlation", REPO / "tools" / "correlation.py")
correlation = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(correlation)

RUN_HEAD = ["run", "learner", "backbone", "width", "seed"]
EPOCHS = range(4)  # 0 = untrained


def _error(run_i: int, epoch: int) -> float:
    """Distinct validation errors: falling with the epoch, higher for later runs."""
    return 0.5 / (1 + epoch) + 0.01 * run_i


def write_study(
    folder: Path,
    runs: int = 4,
    metric=lambda error: 3 * error + 1,
    new_format: bool = False,
    far: bool = False,
) -> Path:
    """A study whose NC metric on the novel-class probes is ``metric(error)`` of the same run and epoch.

    Old format (the committed studies): no ``layer``, ``ci_low``, ``ci_high`` in the NC table, no ``split`` in the
    few-shot table. New format: a ``layer`` column with a ``block4`` layer whose metric runs the other way, and a
    few-shot table with ``split`` (test, plus fashion_test when ``far``).
    """
    folder.mkdir(parents=True)
    logs, nc, shots = [], [], []
    for i in range(runs):
        head = {"run": f"r{i}", "learner": "protonet", "backbone": "conv4", "width": 64, "seed": i}
        last = _error(i, EPOCHS[-1])
        for epoch in EPOCHS:
            error = _error(i, epoch)
            logs.append(
                {**head, "precision": "bf16", "n_params": 1000, "dim": 64, "epoch": epoch, "train_loss": "",
                 "train_acc": "", "val_loss": 0.3, "val_acc": 1 - error, "lr": "", "seconds": "", "steps_per_s": ""}
            )  # fmt: skip
            probes = [("val_episodes", "eval", "query"), ("test_classes", "eval", "all")]
            probes += [("train_classes", "eval", "all"), ("val_episodes", "eval", "support")]  # never paired
            if far and epoch == EPOCHS[-1]:
                probes.append(("fashion_test_classes", "eval", "all"))
            for probe, bn_mode, set_name in probes:
                row = {**head, "epoch": epoch, "probe": probe, "bn_mode": bn_mode, "set": set_name, "metric": "cdnv"}
                nc.append({**row, "mean": metric(error), "std": "", "null": 9.0})
                if new_format:
                    nc[-1] |= {"layer": "embedding", "ci_low": "", "ci_high": ""}
                    nc.append({**row, "mean": -metric(error), "std": "", "null": 9.0, "layer": "block4"})
        # The 5-way 5-shot errors rise with the final-epoch metric, the 5-way 1-shot ones fall.
        tasks = [("test", 5, 1, 0.2 + last), ("test", 5, 5, 1 - last / 2)]
        if far:
            tasks += [("fashion_test", 5, 1, 0.2 + last), ("fashion_test", 5, 5, 0.9 - last)]
        for split, way, shot, accuracy in tasks:
            split_column = {"split": split} if new_format else {}
            task = {"n_way": way, "n_shot": shot, "n_query": 15, "episodes": 100, "accuracy": accuracy, "ci95": 0.01}
            shots.append({**head, **split_column, **task})
    pd.DataFrame(logs).to_csv(folder / "train_log.csv", index=False)
    pd.DataFrame(nc).to_csv(folder / "nc_metrics.csv", index=False)
    pd.DataFrame(shots).to_csv(folder / "fewshot_accuracy.csv", index=False)
    return folder


def results(out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    return pd.read_csv(out / "correlation.csv"), pd.read_csv(out / "points.csv")


def row(table: pd.DataFrame, probe: str, measure: str, study: str | None = None) -> pd.Series:
    hit = table[(table["probe"] == probe) & (table["error_measure"] == measure)]
    if study is not None:
        hit = hit[hit["study"] == study]
    assert len(hit) == 1, hit
    return hit.iloc[0]


# ------------------------------------------------------------------------------------------------- statistics


def test_spearman_gives_ties_their_average_rank():
    # ranks x = 1, 2.5, 2.5, 4 and y = 1, 3, 2, 4: covariance 4.5 over sqrt(4.5 * 5)
    assert correlation.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(3 / math.sqrt(10), abs=1e-15)
    assert correlation.spearman([1, 2, 3], [5, 5, 5]) != correlation.spearman([1, 2, 3], [5, 5, 5])  # NaN


def test_a_weight_counts_a_point_as_often_as_it_was_drawn():
    x, y = np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 1.0, 4.0, 3.0])
    weighted = correlation.weighted_spearman(x, y, np.array([[3, 0, 1, 2]]))[0]
    assert weighted == pytest.approx(correlation.spearman([1, 1, 1, 3, 4, 4], [2, 2, 2, 4, 3, 3]), abs=1e-15)


def test_the_bootstrap_resamples_runs_not_points():
    # Run A rises, run B falls. Drawing runs gives only AA (rho 1), BB (rho -1) and AB (rho 27/35: rank
    # differences 0, 0, 0, 2, 0, -2); drawing points would give many other values.
    x = np.array([1.0, 2, 3, 4, 5, 6])
    y = np.array([1.0, 2, 3, 6, 5, 4])
    rhos = correlation.bootstrap_rhos(x, y, np.array(["A"] * 3 + ["B"] * 3), replicates=400, seed=0)
    assert np.unique(np.round(rhos, 12)).tolist() == [-1.0, round(27 / 35, 12), 1.0]


# ----------------------------------------------------------------------------------------------- the tool


def test_a_monotone_relation_gives_rho_one_and_an_interval_at_one(tmp_path):
    study = write_study(tmp_path / "mono")
    correlation.run(tmp_path / "out", [study], replicates=300)
    table, points = results(tmp_path / "out")
    for probe in ("val_episodes", "test_classes"):
        r = row(table, probe, "val_5w5s")
        assert (r["rho"], r["ci_low"], r["ci_high"], r["n_runs"], r["n_points"]) == (1.0, 1.0, 1.0, 4, 12)
    r = row(table, "test_classes", "test_5w5s_final")
    assert (r["rho"], r["ci_low"], r["ci_high"], r["n_runs"], r["n_points"]) == (1.0, 1.0, 1.0, 4, 4)
    # Only the novel-class probes and sets are paired.
    assert set(zip(points["probe"], points["set"], strict=True)) == {("val_episodes", "query"), ("test_classes", "all")}


def test_reversing_the_relation_gives_minus_one(tmp_path):
    study = write_study(tmp_path / "reversed", metric=lambda error: 1 / error)
    correlation.run(tmp_path / "out", [study], replicates=300)
    table, _ = results(tmp_path / "out")
    for probe, measure in (
        ("val_episodes", "val_5w5s"),
        ("test_classes", "val_5w5s"),
        ("test_classes", "test_5w5s_final"),
    ):
        r = row(table, probe, measure)
        assert (r["rho"], r["ci_low"], r["ci_high"]) == (-1.0, -1.0, -1.0)


def test_a_study_with_one_run_has_a_rho_but_no_interval(tmp_path):
    study = write_study(tmp_path / "single", runs=1)
    correlation.run(tmp_path / "out", [study], replicates=300)
    table, _ = results(tmp_path / "out")
    r = row(table, "val_episodes", "val_5w5s")
    assert r["rho"] == 1.0 and r["n_points"] == 3
    assert math.isnan(r["ci_low"]) and math.isnan(r["ci_high"]) and r["replicates"] == 0
    assert r["note"] == "1 run(s): no interval (the bootstrap resamples runs; needs 3)"
    final = row(table, "test_classes", "test_5w5s_final")
    assert math.isnan(final["rho"]) and final["note"] == "1 point(s): no rho (needs 3)"


def test_epoch_0_is_left_out_unless_asked_for(tmp_path):
    study = write_study(tmp_path / "s")
    correlation.run(tmp_path / "default", [study], replicates=50)
    correlation.run(tmp_path / "with0", [study], replicates=50, include_epoch_0=True)
    (default, points), (with0, points0) = results(tmp_path / "default"), results(tmp_path / "with0")
    assert sorted(points["epoch"].unique()) == [1, 2, 3]
    assert sorted(points0["epoch"].unique()) == [0, 1, 2, 3]
    assert set(default["epoch_0"]) == {"excluded"} and set(with0["epoch_0"]) == {"included"}
    assert row(with0, "val_episodes", "val_5w5s")["n_points"] == 16


def test_new_tables_use_the_embedding_layer_and_the_test_split_unless_told(tmp_path):
    study = write_study(tmp_path / "new", new_format=True, far=True)
    correlation.run(tmp_path / "out", [study], replicates=50)
    correlation.run(tmp_path / "block4", [study], replicates=50, layers=["block4"])
    (table, points), (block4, _) = results(tmp_path / "out"), results(tmp_path / "block4")
    assert set(table["layer"]) == {"embedding"} and set(block4["layer"]) == {"block4"}
    assert row(table, "val_episodes", "val_5w5s")["rho"] == 1.0
    assert row(block4, "val_episodes", "val_5w5s")["rho"] == -1.0
    final = points[points["error_measure"] == "test_5w5s_final"].sort_values("run")
    assert final["error"].tolist() == pytest.approx([_error(i, 3) / 2 for i in range(4)], abs=1e-9)


def test_the_far_domain_probe_pairs_with_the_far_domain_error_at_the_final_epoch(tmp_path):
    study = write_study(tmp_path / "far", new_format=True, far=True)
    correlation.run(tmp_path / "out", [study], replicates=50)
    table, points = results(tmp_path / "out")
    far = points[points["probe"] == "fashion_test_classes"].sort_values("run")
    assert far["error_measure"].unique().tolist() == ["fashion_test_5w5s_final"]
    assert far["epoch"].unique().tolist() == [3]
    assert far["error"].tolist() == pytest.approx([0.1 + _error(i, 3) for i in range(4)], abs=1e-9)
    assert row(table, "fashion_test_classes", "fashion_test_5w5s_final")["rho"] == 1.0


def test_older_tables_without_layer_or_split_columns_load(tmp_path):
    study = write_study(tmp_path / "old")
    header = (study / "nc_metrics.csv").read_text().splitlines()[0].split(",")
    assert "layer" not in header and "ci_low" not in header
    assert "split" not in (study / "fewshot_accuracy.csv").read_text().splitlines()[0]
    correlation.run(tmp_path / "out", [study], replicates=50)
    table, points = results(tmp_path / "out")
    assert set(points["layer"]) == {"embedding"}
    assert row(table, "test_classes", "test_5w5s_final")["n_points"] == 4


def test_a_run_name_in_two_studies_is_two_runs_and_studies_are_also_pooled(tmp_path):
    a, b = write_study(tmp_path / "a", runs=2), write_study(tmp_path / "b", runs=2)
    correlation.run(tmp_path / "out", [a, b], replicates=50)
    table, _ = results(tmp_path / "out")
    assert table["study"].unique().tolist() == ["a", "b", "all"]
    assert row(table, "val_episodes", "val_5w5s", "a")["n_runs"] == 2
    pooled = row(table, "val_episodes", "val_5w5s", "all")
    assert (pooled["n_runs"], pooled["n_points"]) == (4, 12)


def test_pairs_with_nan_are_dropped_and_counted(tmp_path):
    study = write_study(tmp_path / "gaps")
    nc = pd.read_csv(study / "nc_metrics.csv")
    hole = (nc["run"] == "r1") & (nc["epoch"] == 2) & (nc["probe"] == "val_episodes") & (nc["set"] == "query")
    nc.loc[hole, "mean"] = np.nan
    nc.to_csv(study / "nc_metrics.csv", index=False)
    summary = correlation.run(tmp_path / "out", [study], replicates=50)
    table, points = results(tmp_path / "out")
    r = row(table, "val_episodes", "val_5w5s")
    assert (r["n_points"], r["n_dropped"], r["rho"]) == (11, 1, 1.0)
    assert not ((points["run"] == "r1") & (points["epoch"] == 2) & (points["probe"] == "val_episodes")).any()
    assert "1 pairs with NaN dropped" in summary


def test_the_figure_is_the_same_bytes_twice(tmp_path):
    study = write_study(tmp_path / "s", new_format=True, far=True)
    for out in ("one", "two"):
        correlation.run(tmp_path / out, [study], replicates=50)
    png = (tmp_path / "one" / "correlation.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and b"Matplotlib" not in png
    assert png == (tmp_path / "two" / "correlation.png").read_bytes()


def test_a_table_without_a_column_is_one_error_line_naming_it_and_writes_nothing(tmp_path, capsys):
    study = write_study(tmp_path / "broken")
    nc = pd.read_csv(study / "nc_metrics.csv").drop(columns="metric")
    nc.to_csv(study / "nc_metrics.csv", index=False)
    assert correlation.main([str(tmp_path / "out"), str(study)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert str(study / "nc_metrics.csv") in err and "'metric'" in err
    assert not (tmp_path / "out").exists()


def test_the_committed_learners_study_loads(tmp_path):
    summary = correlation.run(tmp_path / "out", [REPO / "docs" / "results" / "learners"], replicates=100)
    table, points = results(tmp_path / "out")
    study = REPO / "docs" / "results" / "learners"
    logs, nc = pd.read_csv(study / "train_log.csv"), pd.read_csv(study / "nc_metrics.csv")
    runs = logs["run"].nunique()
    assert points[["study", "run"]].drop_duplicates().shape[0] == runs
    val = nc[(nc["probe"] == "val_episodes") & (nc["metric"] == "nc1") & (nc["set"] == "query")]
    measured = val[val["epoch"] > 0]
    pairs = measured[["run", "epoch"]].drop_duplicates().merge(logs[["run", "epoch"]].drop_duplicates())
    r = table[(table["probe"] == "val_episodes") & (table["metric"] == "nc1") & (table["error_measure"] == "val_5w5s")]
    assert r["n_points"].tolist() == [len(pairs)]  # every run at every measured epoch after 0
    assert f"{runs} runs" in summary
