"""The pipeline's tables: their schemas, the one reader, the runs table, and the aggregate and dvc-metrics stages.

Every per-run table starts with the run columns of :mod:`metacollapse.runs`. ``results/{kind}.csv`` are the
row-wise concatenations of the per-run tables; ``reports/metrics/`` and ``reports/plots/`` are what
``dvc metrics`` and ``dvc plots`` show.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from metacollapse.atomic import atomic_path, atomic_write_text
from metacollapse.runs import RUN_COLUMNS, SPEC_KEYS, check_spec
from metacollapse.schemas import (
    KEYS,
    LEGACY_DEFAULTS,
    LEGACY_NAMES,
    SCHEMAS,
)

RUN_COLUMN_KEYS = ("learner.name", "backbone.arch", "backbone.width")
_WHAT = {
    "train_log": "training log",
    "fewshot": "few-shot accuracy table",
    "nc": "NC metrics table",
    "runs": "runs table",
}

#: The few-shot settings reported as headline metrics, as (n_way, n_shot).
HEADLINE_SETTINGS = ((5, 1), (5, 5), (20, 1), (20, 5))
PLOT_CURVES = ("val_acc", "train_loss")


def _check_kind(kind: str) -> dict[str, str]:
    if kind not in SCHEMAS:
        raise ValueError(f"unknown table kind {kind!r}; expected one of {sorted(SCHEMAS)}")
    return SCHEMAS[kind]


def _read_typed(path: Path, kind: str) -> pd.DataFrame:
    """The schema's columns of ``path`` typed (then any other columns as text); errors name file, column, line."""
    columns, what = _check_kind(kind), _WHAT[kind]
    defaults = LEGACY_DEFAULTS.get(kind, {})
    expected = f"expected columns: {', '.join(columns)}"
    if not path.is_file():
        raise ValueError(f"{path}: {what} not found ({expected})")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError as exc:
        raise ValueError(f"{path}: {what} is empty ({expected})") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        raise ValueError(f"{path}: {what} is not a readable CSV file: {exc}") from exc
    df.columns = [str(c).strip() for c in df.columns]
    renamed = {old: new for old, new in LEGACY_NAMES.get(kind, {}).items() if new not in df.columns}
    df = df.rename(columns=renamed)
    missing = [c for c in columns if c not in df.columns and c not in defaults]
    if missing:
        raise ValueError(
            f"{path}: {what} is missing column(s) {', '.join(repr(c) for c in missing)} "
            f"({expected}; found: {', '.join(df.columns) or 'none'})"
        )
    if df.empty:
        raise ValueError(f"{path}: {what} has a header but no rows")
    out: dict[str, Any] = {}
    for col, kind_of in columns.items():
        if col not in df.columns:
            out[col] = pd.Series(defaults[col], index=df.index, dtype=object if kind_of == "str" else np.float64)
            continue
        raw = df[col].astype(str).str.strip()
        if kind_of == "str":
            if (raw == "").any():
                line = int(np.flatnonzero((raw == "").to_numpy())[0]) + 2
                raise ValueError(f"{path}: column {col!r} is empty on line {line}")
            out[col] = raw
            continue
        blank = raw.str.lower().isin(["", "nan", "na", "none", "null"])
        num = pd.to_numeric(raw.where(~blank), errors="coerce")
        bad = num.isna() & ~blank
        if kind_of == "int":
            bad |= blank | (num.notna() & (num != np.round(num)))
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise ValueError(
                f"{path}: column {col!r} has a non-{'integer' if kind_of == 'int' else 'numeric'} value "
                f"{df[col].iloc[row]!r} on line {row + 2}"
            )
        out[col] = num.astype(np.int64) if kind_of == "int" else num.astype(np.float64)
    for col in df.columns:
        if col not in columns:
            out[col] = df[col]
    return pd.DataFrame(out)


def _width_text(width: pd.Series) -> pd.Series:
    return width.map(lambda w: "" if not np.isfinite(w) else f"{w:g}")


def _validated(df: pd.DataFrame, kind: str, sources: pd.Series) -> pd.DataFrame:
    """One identity per run name, no duplicate keys (a training log's last row of an epoch wins within a file)."""
    what, key = _WHAT[kind], list(KEYS[kind])

    def where(mask: pd.Series) -> str:
        return ", ".join(dict.fromkeys(sources[mask]))

    if set(RUN_COLUMNS) <= set(df.columns):
        ident = df[["run", "learner", "backbone", "seed"]].astype(str).assign(width=_width_text(df["width"]))
        counts = ident.drop_duplicates().groupby("run", sort=False).size()
        if (counts > 1).any():
            run = counts.index[int(np.flatnonzero(counts.to_numpy() > 1)[0])]
            found = ident[ident["run"] == run].drop_duplicates().drop(columns="run").to_dict("records")
            raise ValueError(f"{where(df['run'] == run)}: {what} gives run {run!r} several identities: {found}")
    if kind == "train_log":  # a resumed run may log an epoch twice
        keep = ~pd.concat([df[key], sources.rename("__source")], axis=1).duplicated(keep="last")
        df, sources = df[keep], sources[keep]
    dup = df.duplicated(key, keep=False)
    if dup.any():
        first = df.loc[dup, key].iloc[0]
        same = (df[key] == first).all(axis=1)
        raise ValueError(f"{where(same)}: {what} has duplicate rows for {first.to_dict()}")
    return df.reset_index(drop=True)


def read_table(path: str | Path, kind: str) -> pd.DataFrame:
    """Read and validate one table of ``kind`` (a key of :data:`SCHEMAS`); errors name the file.

    Columns come typed, in schema order, then any other columns as text. Older tables read as the current ones
    (:data:`LEGACY_DEFAULTS`, :data:`LEGACY_NAMES`).
    """
    path = Path(path)
    df = _read_typed(path, kind)
    return _validated(df, kind, pd.Series(str(path), index=df.index))


def concat_tables(kind: str, inputs: Sequence[str | Path], out: str | Path) -> pd.DataFrame:
    """Concatenate per-run tables of one ``kind`` into ``out``, sorted by :data:`KEYS`."""
    _check_kind(kind)
    if not inputs:
        raise ValueError(f"no {_WHAT[kind]} to aggregate")
    frames = [_read_typed(Path(p), kind) for p in inputs]
    sources = pd.concat([pd.Series(str(p), index=f.index) for p, f in zip(inputs, frames, strict=True)])
    table = _validated(pd.concat(frames, ignore_index=True), kind, sources.reset_index(drop=True))
    table = table.sort_values(list(KEYS[kind]), kind="stable")
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False, float_format="%.9g")
    return table


# ---------------------------------------------------------------------------------------------- runs table


def _cell(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, (bool, int, float)):
        return json.dumps(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _flatten(value: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, item in value.items():
        if isinstance(item, Mapping):
            out.update(_flatten(item, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = _cell(item)
    return out


def _spec_key_order(key: str) -> tuple[int, int, str]:
    top, _, leaf = key.partition(".")
    rank = SPEC_KEYS.index(top) if top in SPEC_KEYS else len(SPEC_KEYS)
    return rank, 0 if leaf in ("name", "arch") else 1, key


def write_runs_table(specs: Sequence[Mapping[str, Any]], out: str | Path) -> pd.DataFrame:
    """``results/runs.csv``: per run, ``run`` and every key of its spec flattened with dots (``train.lr``)."""
    if not isinstance(specs, Sequence) or isinstance(specs, (str, bytes)) or not specs:
        raise ValueError(f"expected a non-empty list of run specs, got {str(specs)[:200]}")
    rows = []
    for i, spec in enumerate(specs):
        if not isinstance(spec, Mapping):
            raise ValueError(f"run spec {i}: expected a JSON object, got {str(spec)[:200]}")
        spec = check_spec(spec, f"run spec {i}")
        rows.append({"run": str(spec["name"]), **_flatten({k: v for k, v in spec.items() if k != "name"})})
    names = [r["run"] for r in rows]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"run names must be unique; repeated: {repeated}")
    keys = sorted({k for r in rows for k in r if k != "run"}, key=_spec_key_order)
    table = pd.DataFrame([[r["run"], *(r.get(k, "") for k in keys)] for r in rows], columns=["run", *keys])
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False)
    return table


def varying_keys(runs: pd.DataFrame) -> list[str]:
    """The spec keys of a runs table whose values differ across its rows, except ``run`` and ``seed``."""
    return [c for c in runs.columns if c not in ("run", "seed") and runs[c].astype(str).nunique() > 1]


# ------------------------------------------------------------------------------------------- DVC metrics


def write_dvc_metrics(
    train_log: str | Path, fewshot: str | Path, metrics_dir: str | Path, plots_dir: str | Path
) -> list[Path]:
    """Per run a ``{run}.json`` in ``metrics_dir`` (``dvc metrics show`` prints one row per file): the final
    validation accuracy and the few-shot accuracies (percent); per run and curve a plot CSV in ``plots_dir``.

    Accuracies on the ``test`` split are ``acc_{way}w{shot}s``, on another split ``acc_{split}_{way}w{shot}s``.
    """
    log = read_table(train_log, "train_log")
    shots = read_table(fewshot, "fewshot")
    summary: dict[str, dict[str, float]] = {}
    for run, rows in log.groupby("run", sort=True):
        final = rows.sort_values("epoch").iloc[-1]
        summary[str(run)] = {"val_acc": round(100 * float(final["val_acc"]), 2)}
    for row in shots.itertuples(index=False):
        if (row.n_way, row.n_shot) in HEADLINE_SETTINGS:
            split = "" if row.split == "test" else f"{row.split}_"
            summary.setdefault(str(row.run), {})[f"acc_{split}{row.n_way}w{row.n_shot}s"] = round(
                100 * float(row.accuracy), 2
            )
    metrics_dir, plots_dir = Path(metrics_dir), Path(plots_dir)
    for folder, pattern in ((metrics_dir, "*.json"), (plots_dir, "*.csv")):
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(pattern):  # runs of an earlier config
            stale.unlink()
    written = [
        atomic_write_text(metrics_dir / f"{run}.json", json.dumps(values, indent=2, sort_keys=True) + "\n")
        for run, values in summary.items()
    ]
    for run, rows in log.groupby("run", sort=True):
        for curve in PLOT_CURVES:
            path = plots_dir / f"{curve}_{run}.csv"
            with atomic_path(path) as tmp:
                rows[["epoch", curve]].dropna().to_csv(tmp, index=False, float_format="%.9g")
            written.append(path)
    return written
