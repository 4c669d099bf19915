"""The aggregate stage: one table per kind over all runs, and the headline numbers DVC shows.

``results/train_log.csv``, ``results/fewshot_accuracy.csv`` and ``results/nc_metrics.csv`` are the row-wise
concatenations of the per-run tables (each already carries the run columns of :mod:`metacollapse.runs`).
``results/metrics.json`` holds a few numbers per run for ``dvc metrics show|diff``; ``results/plots/`` one small
CSV per run and curve for ``dvc plots show``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from metacollapse.atomic import atomic_path, atomic_write_text
from metacollapse.runs import RUN_COLUMNS

SORT_KEYS = {
    "train_log": ["run", "epoch"],
    "fewshot": ["run", "n_way", "n_shot"],
    "nc": ["run", "epoch", "probe", "set", "metric"],
}
#: The few-shot settings reported as headline metrics, as (n_way, n_shot).
HEADLINE_SETTINGS = ((5, 1), (5, 5), (20, 1), (20, 5))
PLOT_CURVES = ("val_acc", "train_loss")


def read_table(path: Path, required: Sequence[str]) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: cannot read the table ({type(error).__name__}: {error})") from error
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing} (has {list(frame.columns)})")
    return frame


def concat_tables(kind: str, inputs: Sequence[Path], out: Path) -> pd.DataFrame:
    """Concatenate per-run tables of one ``kind`` (train_log, fewshot, nc) into ``out``, sorted."""
    if kind not in SORT_KEYS:
        raise ValueError(f"unknown table kind {kind!r}; expected one of {sorted(SORT_KEYS)}")
    required = [*RUN_COLUMNS, *SORT_KEYS[kind]]
    table = pd.concat([read_table(Path(p), required) for p in inputs], ignore_index=True)
    table = table.sort_values(SORT_KEYS[kind], kind="stable")
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False, float_format="%.9g")
    return table


def write_dvc_metrics(train_log: Path, fewshot: Path, metrics: Path, plots_dir: Path) -> list[Path]:
    """Per run: final validation accuracy and the few-shot accuracies (percent); per run and curve a plot CSV."""
    log = read_table(train_log, ["run", "epoch", *PLOT_CURVES])
    shots = read_table(fewshot, ["run", "n_way", "n_shot", "accuracy"])
    summary: dict[str, dict[str, float]] = {}
    for run, rows in log.groupby("run", sort=True):
        final = rows.sort_values("epoch").iloc[-1]
        summary[str(run)] = {"val_acc": round(100 * float(final["val_acc"]), 2)}
    for (run, way, shot), rows in shots.groupby(["run", "n_way", "n_shot"], sort=True):
        if (way, shot) in HEADLINE_SETTINGS:
            summary.setdefault(str(run), {})[f"acc_{way}w{shot}s"] = round(100 * float(rows["accuracy"].iloc[0]), 2)
    written = [atomic_write_text(metrics, json.dumps(summary, indent=2, sort_keys=True) + "\n")]
    plots_dir.mkdir(parents=True, exist_ok=True)
    for stale in plots_dir.glob("*.csv"):
        stale.unlink()
    for run, rows in log.groupby("run", sort=True):
        for curve in PLOT_CURVES:
            path = plots_dir / f"{curve}_{run}.csv"
            with atomic_path(path) as tmp:
                rows[["epoch", curve]].dropna().to_csv(tmp, index=False, float_format="%.9g")
            written.append(path)
    return written
