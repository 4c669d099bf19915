"""Figures of the neural-collapse study (owns every file under ``results/figures/``).

This module turns the pipeline's tables into the report figures; it computes no metric itself (the NC
definitions, which the axis labels in :data:`METRIC_INFO` summarise, live in :mod:`metacollapse.nc`).
It also owns the Snakemake report captions ``workflow/report/{name}.rst``, one per figure name.

Inputs (formats in ``docs/CONTRACTS.md``):

* ``results/nc_metrics.csv``: long table ``backbone, epoch, probe, set, metric, mean, std``;
* ``results/{backbone}/train_log.csv``: per-epoch training log (the backbone is the parent folder's name);
* ``results/{backbone}/fewshot_accuracy.csv``: final few-shot accuracy with 95% confidence half-widths.

Output: for every name in :data:`FIGURE_NAMES` a PNG (150 dpi) and a PDF in ``out_dir``:
one figure per NC metric (metric against epoch, one colour per backbone, one panel per probe),
``training`` (loss and accuracy curves) and ``summary`` (final-epoch comparison of the backbones).

Backbone names are never hard-coded: they are taken from the data, in order of first appearance
(the NC table first, then the training logs, then the few-shot tables), and keep one colour everywhere.

The output is deterministic (same inputs give the same bytes): the matplotlib style is reset to its defaults,
the PNG/PDF metadata that carry a version or a date are dropped, and the SVG hash salt is fixed.
Every file is written atomically (temporary file in the same folder, then ``os.replace``, through
:mod:`metacollapse.atomic`).
The plotting uses :class:`matplotlib.figure.Figure` directly (Agg rendering), never ``pyplot``,
so it does not touch the process-wide backend and leaks no figures.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import matplotlib.style
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from metacollapse.atomic import atomic_path
from metacollapse.nc import CLASSIFIER_METRICS, FEATURE_METRICS

__all__ = [
    "FIGURE_NAMES",
    "NC_METRICS",
    "FigureInputError",
    "backbone_order",
    "make_figures",
    "read_fewshot",
    "read_nc_metrics",
    "read_train_logs",
    "use_log_scale",
]

#: The NC metrics that get a figure of their own, in display order (the order of the NC table).
NC_METRICS: tuple[str, ...] = (*FEATURE_METRICS, *CLASSIFIER_METRICS)

#: Every figure written by :func:`make_figures` (``{name}.png`` and ``{name}.pdf``), and every caption
#: ``workflow/report/{name}.rst``.
FIGURE_NAMES: tuple[str, ...] = (*NC_METRICS, "training", "summary")

#: Probes in their preferred panel order; probes not listed here are appended in order of appearance.
PROBE_ORDER: tuple[str, ...] = ("train_episodes", "val_episodes", "train_classes", "test_classes")

#: A span of more than this many decades (positive values only) switches an axis to log scale.
LOG_SCALE_DECADES = 1.5

DPI = 150

NC_COLUMNS: dict[str, str] = {
    "backbone": "str",
    "epoch": "int",
    "probe": "str",
    "set": "str",
    "metric": "str",
    "mean": "float",
    "std": "float",
}
TRAIN_LOG_COLUMNS: dict[str, str] = {
    "epoch": "int",
    "train_loss": "float",
    "train_acc": "float",
    "val_loss": "float",
    "val_acc": "float",
}
FEWSHOT_COLUMNS: dict[str, str] = {
    "backbone": "str",
    "n_way": "int",
    "n_shot": "int",
    "accuracy": "float",
    "ci95": "float",
}


@dataclass(frozen=True)
class MetricInfo:
    """How one NC metric is named on the figures."""

    short: str  # tick label in the summary figure
    title: str  # figure title
    formula: str  # y-axis label, first line (mathtext allowed)


_LOWER = "(lower = more collapse)"

METRIC_INFO: dict[str, MetricInfo] = {
    "nc1": MetricInfo("NC1", "NC1: within-class variability collapse", r"NC1 = tr$(\Sigma_W \Sigma_B^{+})/C$"),
    "nc1_quotient": MetricInfo(
        "NC1\nquotient",
        "NC1 (quotient form): within- vs between-class scatter",
        r"NC1 quotient = tr$(\Sigma_W)\,/\,$tr$(\Sigma_B)$",
    ),
    "nc2_equinorm": MetricInfo(
        "NC2\nequinorm",
        "NC2: equal norms of the centred class means",
        r"NC2 equinorm = std / mean of $\Vert\mu_c - \mu_G\Vert$",
    ),
    "nc2_equiangularity": MetricInfo(
        "NC2\nequiangular",
        "NC2: equal angles between the centred class means",
        r"NC2 equiangularity = std of $\cos(\mu_c, \mu_{c'})$",
    ),
    "nc2_maxangle": MetricInfo(
        "NC2\nmax-angle",
        "NC2: maximal angles between the centred class means",
        r"NC2 max-angle = mean $|\cos(\mu_c, \mu_{c'}) + 1/(C-1)|$",
    ),
    "nc2_etf": MetricInfo(
        "NC2\nETF",
        "NC2: distance of the class means to a simplex ETF",
        r"NC2 ETF distance $\Vert MM^\top/\Vert MM^\top\Vert_F - $ETF$\Vert_F$",
    ),
    "nc2_etf_rownorm": MetricInfo(
        "NC2 ETF\n(rows norm.)",
        "NC2: distance to a simplex ETF, class means normalised",
        r"NC2 ETF distance, rows of $M$ normalised",
    ),
    "cdnv": MetricInfo(
        "CDNV",
        "CDNV: class-distance normalised variance",
        r"CDNV = mean $(\sigma_c^2 + \sigma_{c'}^2)\,/\,(2\Vert\mu_c - \mu_{c'}\Vert^2)$",
    ),
    "nc3": MetricInfo(
        "NC3",
        r"NC3 (self-duality): centred prototypes $\tilde W$ align with the centred class means $M$",
        r"NC3 = $\Vert \tilde W/\Vert \tilde W\Vert_F - M/\Vert M\Vert_F\Vert_F^2$",
    ),
    "nc4": MetricInfo(
        "NC4",
        "NC4: ProtoNet decisions match the nearest class mean",
        "NC4 = fraction nearest prototype ≠ nearest class mean",
    ),
}

PROBE_TITLES: dict[str, str] = {
    "train_episodes": "training episodes (meta-train classes)",
    "val_episodes": "validation episodes (meta-val classes)",
    "train_classes": "training classes (all images per class)",
    "test_classes": "test classes (all images per class, unseen)",
}

SET_STYLES: dict[str, str] = {"support": "-", "query": "--", "all": "-", "protonet": "-"}
SET_LABELS: dict[str, str] = {
    "support": "support images",
    "query": "query images",
    "all": "all images (class probes)",
    "protonet": "ProtoNet prototypes (from support images)",
}

_RC: dict[str, object] = {
    "svg.hashsalt": "metacollapse",
    "savefig.dpi": DPI,
    "font.size": 9,
    "axes.titlesize": 9.5,
    "axes.labelsize": 9,
    "legend.fontsize": 8.5,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "pdf.compression": 6,
}
_PNG_METADATA: dict[str, str | None] = {"Software": None}
_PDF_METADATA: dict[str, str | None] = {"Creator": None, "Producer": None, "CreationDate": None}


class FigureInputError(ValueError):
    """An input table of the figures is missing, empty or malformed; the message names the file."""


# ----------------------------------------------------------------------------------------------- helpers


def use_log_scale(values: Iterable[float], decades: float = LOG_SCALE_DECADES) -> bool:
    """Whether ``values`` should be drawn on a log axis.

    True when every finite value is strictly positive and ``max / min`` exceeds ``10 ** decades``.
    Non-finite values are ignored; no finite value, or any value <= 0, gives False.
    """
    arr = np.asarray(list(values), dtype=float).ravel()
    arr = arr[np.isfinite(arr)]
    if arr.size == 0 or bool(np.any(arr <= 0)):
        return False
    return bool(np.log10(arr.max() / arr.min()) > decades)


def _ordered_unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _read_csv(path: Path, columns: dict[str, str], what: str) -> pd.DataFrame:
    """Read ``path`` and check that it has ``columns`` with the right kinds; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FigureInputError(f"{path}: {what} not found")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError as exc:
        raise FigureInputError(f"{path}: {what} is empty (expected columns: {', '.join(columns)})") from exc
    except pd.errors.ParserError as exc:
        raise FigureInputError(f"{path}: {what} is not a valid CSV file: {exc}") from exc
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise FigureInputError(
            f"{path}: {what} is missing column(s) {', '.join(repr(c) for c in missing)} "
            f"(expected: {', '.join(columns)}; found: {', '.join(df.columns) or 'none'})"
        )
    if df.empty:
        raise FigureInputError(f"{path}: {what} has a header but no rows")
    out = pd.DataFrame(index=df.index)
    for col, kind in columns.items():
        raw = df[col].str.strip()
        if kind == "str":
            if (raw == "").any():
                row = int(np.flatnonzero((raw == "").to_numpy())[0]) + 2
                raise FigureInputError(f"{path}: column {col!r} is empty on line {row}")
            out[col] = raw
            continue
        blank = raw.str.lower().isin(["", "nan", "na", "none", "null"])
        num = pd.to_numeric(raw.where(~blank), errors="coerce")
        bad = num.isna() & ~blank
        if kind == "int":
            bad |= blank | (num.notna() & (num != np.round(num)))
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise FigureInputError(
                f"{path}: column {col!r} has a non-{'integer' if kind == 'int' else 'numeric'} value "
                f"{df[col].iloc[row]!r} on line {row + 2}"
            )
        out[col] = num.astype(np.int64) if kind == "int" else num.astype(float)
    return out


def read_nc_metrics(path: Path) -> pd.DataFrame:
    """Read and validate ``nc_metrics.csv`` (one row per backbone, epoch, probe, set and metric)."""
    df = _read_csv(path, NC_COLUMNS, "NC metrics table")
    key = ["backbone", "epoch", "probe", "set", "metric"]
    dup = df.duplicated(key, keep=False)
    if dup.any():
        first = df.loc[dup, key].iloc[0].to_dict()
        raise FigureInputError(f"{path}: NC metrics table has duplicate rows for {first}")
    return df.reset_index(drop=True)


def read_train_logs(paths: Sequence[Path]) -> pd.DataFrame:
    """Read the training logs; the backbone is each file's parent folder name.

    A resumed run may log an epoch twice: the last row of an epoch wins.
    """
    frames = []
    for path in paths:
        df = _read_csv(Path(path), TRAIN_LOG_COLUMNS, "training log")
        df = df.drop_duplicates("epoch", keep="last").sort_values("epoch", kind="stable")
        df.insert(0, "backbone", Path(path).absolute().parent.name)
        frames.append(df)
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in ["backbone", *TRAIN_LOG_COLUMNS]})
    out = pd.concat(frames, ignore_index=True)
    return out


def read_fewshot(paths: Sequence[Path]) -> pd.DataFrame:
    """Read and concatenate the few-shot accuracy tables (accuracy and ci95 are fractions)."""
    frames = [_read_csv(Path(p), FEWSHOT_COLUMNS, "few-shot accuracy table") for p in paths]
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in FEWSHOT_COLUMNS})
    out = pd.concat(frames, ignore_index=True)
    key = ["backbone", "n_way", "n_shot"]
    dup = out.duplicated(key, keep=False)
    if dup.any():
        first = out.loc[dup, key].iloc[0].to_dict()
        raise FigureInputError(
            f"few-shot accuracy tables {', '.join(str(p) for p in paths)}: duplicate rows for {first}"
        )
    return out


def backbone_order(nc: pd.DataFrame, logs: pd.DataFrame, fewshot: pd.DataFrame) -> list[str]:
    """Backbones in order of first appearance: NC table, then training logs, then few-shot tables.

    This order fixes each backbone's colour (``C0``, ``C1``, ...) in every figure.
    """
    return _ordered_unique([*nc["backbone"], *logs["backbone"], *fewshot["backbone"]])


def _save(fig: Figure, out_dir: Path, name: str) -> list[Path]:
    """Write ``fig`` as ``{name}.png`` and ``{name}.pdf`` atomically (:func:`metacollapse.atomic.atomic_path`)."""
    written = []
    for ext, metadata in (("png", _PNG_METADATA), ("pdf", _PDF_METADATA)):
        target = out_dir / f"{name}.{ext}"
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format=ext, dpi=DPI, metadata=metadata)
        written.append(target)
    return written


def _colors(backbones: Sequence[str]) -> dict[str, str]:
    palette = [f"C{i}" for i in range(10)]
    return {b: palette[i % len(palette)] for i, b in enumerate(backbones)}


def _probe_order(probes: Iterable[str]) -> list[str]:
    seen = _ordered_unique(probes)
    return [p for p in PROBE_ORDER if p in seen] + [p for p in seen if p not in PROBE_ORDER]


def _metric_label(metric: str) -> str:
    info = METRIC_INFO.get(metric)
    return f"{info.formula}\n{_LOWER}" if info else metric


def _no_data(ax: Axes, text: str = "no data") -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _block_legend(fig: Figure, blocks: Sequence[Sequence[Line2D | Patch]], max_cols: int = 6) -> None:
    """One figure legend below the panels, each block (backbones, line styles) on its own row(s).

    Matplotlib fills legend columns first, so the entries are padded with invisible handles and reordered
    to make every row hold a single block.
    """
    blocks = [list(b) for b in blocks if b]
    if not blocks:
        return
    ncols = min(max(len(b) for b in blocks), max_cols)
    rows: list[list[Line2D | Patch]] = []
    for block in blocks:
        for start in range(0, len(block), ncols):
            row = block[start : start + ncols]
            rows.append(row + [Line2D([], [], alpha=0.0, label=" ") for _ in range(ncols - len(row))])
    handles = [rows[r][c] for c in range(ncols) for r in range(len(rows))]
    fig.legend(handles=handles, loc="outside lower center", ncols=ncols, frameon=False)


def _grid(n: int) -> tuple[int, int]:
    ncols = 1 if n == 1 else 2
    return (n + ncols - 1) // ncols, ncols


# ------------------------------------------------------------------------------------------------ figures


def _nc_metric_figure(nc: pd.DataFrame, metric: str, backbones: Sequence[str], colors: dict[str, str]) -> Figure:
    data = nc[nc["metric"] == metric]
    probes = _probe_order(nc["probe"])  # same panels for every metric, even where one has no rows
    nrows, ncols = _grid(max(len(probes), 1))
    fig = Figure(figsize=(5.2 * ncols, 3.5 * nrows + 0.9), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    info = METRIC_INFO.get(metric)
    fig.suptitle(f"{info.title if info else metric}, against training epoch", fontsize=11)
    sets_used: list[str] = []
    has_band = False
    drawn: set[str] = set()
    for k, (ax, probe) in enumerate(zip(axes, probes, strict=False)):
        ax.set_title(PROBE_TITLES.get(probe, probe))
        pdata = data[data["probe"] == probe]
        if pdata.empty or not np.isfinite(pdata["mean"]).any():
            _no_data(ax, f"no {metric} values for this probe")
            continue
        sets = _ordered_unique(pdata["set"])
        log = use_log_scale(pdata["mean"])
        for backbone in backbones:
            for set_name in sets:
                rows = pdata[(pdata["backbone"] == backbone) & (pdata["set"] == set_name)]
                rows = rows[np.isfinite(rows["mean"])].sort_values("epoch")
                if rows.empty:
                    continue
                if set_name not in sets_used:
                    sets_used.append(set_name)
                drawn.add(backbone)
                x = rows["epoch"].to_numpy()
                y = rows["mean"].to_numpy()
                style = SET_STYLES.get(set_name, ":") if len(sets) > 1 else "-"
                ax.plot(
                    x,
                    y,
                    linestyle=style,
                    color=colors[backbone],
                    linewidth=1.6,
                    marker="o" if len(x) <= 12 else None,
                    markersize=3,
                )
                std = rows["std"].to_numpy()
                if np.isfinite(std).any():
                    lo, hi = y - std, y + std
                    if log:  # keep the band drawable on a log axis: clip its lower edge a decade below
                        lo = np.maximum(lo, y / 10)
                    ax.fill_between(x, lo, hi, color=colors[backbone], alpha=0.15, linewidth=0)
                    has_band = True
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        # full description on the left column; the right column repeats only the metric's short name
        left = k % ncols == 0
        ax.set_ylabel(_metric_label(metric) if left else (info.short.replace("\n", " ") if info else metric))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes[len(probes) :]:
        ax.set_visible(False)

    backbone_handles = [Line2D([], [], color=colors[b], linewidth=2, label=b) for b in backbones if b in drawn]
    style_handles: list[Line2D | Patch] = []
    for s in sets_used:
        style = SET_STYLES.get(s, ":") if len(sets_used) > 1 and s in ("support", "query") else "-"
        style_handles.append(Line2D([], [], color="0.2", linestyle=style, label=SET_LABELS.get(s, s)))
    if has_band:
        style_handles.append(Patch(color="0.5", alpha=0.3, label="± 1 std over episodes"))
    _block_legend(fig, [backbone_handles, style_handles])
    return fig


def _training_figure(logs: pd.DataFrame, backbones: Sequence[str], colors: dict[str, str]) -> Figure:
    fig = Figure(figsize=(10, 6.6), layout="constrained")
    axes = fig.subplots(2, 2, sharex=True, squeeze=False)
    fig.suptitle("Training curves of the Prototypical Networks (episodic loss and accuracy)", fontsize=11)
    panels = [
        (axes[0, 0], "train_loss", "training loss", "loss (cross-entropy)", 1.0),
        (axes[0, 1], "val_loss", "validation loss", "loss (cross-entropy)", 1.0),
        (axes[1, 0], "train_acc", "training accuracy", "accuracy (%)", 100.0),
        (axes[1, 1], "val_acc", "validation accuracy", "accuracy (%)", 100.0),
    ]
    plotted: list[str] = []
    for ax, col, title, ylabel, scale in panels:
        ax.set_title(title)
        any_line = False
        for backbone in backbones:
            rows = logs[logs["backbone"] == backbone]
            rows = rows[np.isfinite(rows[col])]
            if rows.empty:
                continue
            any_line = True
            if backbone not in plotted:
                plotted.append(backbone)
            ax.plot(
                rows["epoch"],
                rows[col] * scale,
                color=colors[backbone],
                linewidth=1.6,
                marker="o" if len(rows) <= 12 else None,
                markersize=3,
            )
        if not any_line:
            _no_data(ax)
            continue
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelbottom=True)
        ax.set_xlabel("epoch")
    for row in range(2):  # one y-range per row so that training and validation compare directly
        lims = [a.get_ylim() for a in axes[row] if a.has_data()]
        if len(lims) == 2:
            lo, hi = min(lim[0] for lim in lims), max(lim[1] for lim in lims)
            for a in axes[row]:
                a.set_ylim(lo, hi)
    handles = [Line2D([], [], color=colors[b], linewidth=2, label=b) for b in plotted]
    if handles:
        fig.legend(
            handles=handles,
            loc="outside lower center",
            ncols=min(len(handles), 6),
            frameon=False,
            title="backbone",
        )
    return fig


def _final_epoch_values(nc: pd.DataFrame, probe: str, backbones: Sequence[str]) -> tuple[pd.DataFrame, dict]:
    """Final-epoch value of every metric for ``probe``: set ``all`` for NC1/NC2/CDNV, ``protonet`` for NC3/4."""
    rows = nc[(nc["probe"] == probe) & nc["metric"].isin(NC_METRICS)]
    finals: dict[str, int] = {}
    table = pd.DataFrame(np.nan, index=list(NC_METRICS), columns=list(backbones))
    for backbone in backbones:
        brows = rows[rows["backbone"] == backbone]
        if brows.empty:
            continue
        last = int(brows["epoch"].max())
        finals[backbone] = last
        brows = brows[brows["epoch"] == last]
        for metric in NC_METRICS:
            mrows = brows[brows["metric"] == metric]
            if mrows.empty:
                continue
            preferred = mrows[mrows["set"].isin(["all", "protonet"])]
            table.loc[metric, backbone] = float((preferred if not preferred.empty else mrows)["mean"].iloc[0])
    return table, finals


def _summary_figure(
    nc: pd.DataFrame, fewshot: pd.DataFrame, backbones: Sequence[str], colors: dict[str, str]
) -> Figure:
    class_probes = [p for p in _probe_order(nc["probe"]) if (nc.loc[nc["probe"] == p, "set"] == "all").any()]
    if not class_probes:
        class_probes = [p for p in ("train_classes", "test_classes") if p in set(nc["probe"])]
    n_bar_panels = max(len(class_probes), 1)
    fig = Figure(figsize=(11, 3.3 * n_bar_panels + 3.6), layout="constrained")
    axes = fig.subplots(
        n_bar_panels + 1, 1, squeeze=False, gridspec_kw={"height_ratios": [1.0] * n_bar_panels + [1.05]}
    ).ravel()
    fig.suptitle("Final-epoch comparison of the backbones", fontsize=11)
    n_b = max(len(backbones), 1)
    width = 0.8 / n_b
    x = np.arange(len(NC_METRICS))
    for ax, probe in zip(axes[:-1], class_probes or [None], strict=False):
        if probe is None:
            _no_data(ax, "no class probes in the NC metrics table")
            continue
        table, finals = _final_epoch_values(nc, probe, backbones)
        positive = table.to_numpy()[np.isfinite(table.to_numpy()) & (table.to_numpy() > 0)]
        if positive.size == 0:
            _no_data(ax, f"no positive NC values for {probe}")
            continue
        floor = 10 ** np.floor(np.log10(positive.min()) - 0.5)
        ax.set_yscale("log")
        for i, backbone in enumerate(backbones):
            vals = table[backbone].to_numpy()
            pos = x - 0.4 + width * (i + 0.5)
            ok = np.isfinite(vals) & (vals > 0)
            label = f"{backbone} (epoch {finals[backbone]})" if backbone in finals else f"{backbone} (no data)"
            ax.bar(pos[ok], vals[ok], width=width * 0.92, color=colors[backbone], label=label)
            for p, v in zip(pos[~ok], vals[~ok], strict=True):
                ax.text(
                    p,
                    floor * 1.3,
                    "0" if np.isfinite(v) else "n/a",
                    ha="center",
                    va="bottom",
                    fontsize=7.5,
                    fontweight="bold",
                    color=colors[backbone],
                )
        ax.set_ylim(bottom=floor)
        ax.set_xticks(x, [METRIC_INFO[m].short for m in NC_METRICS])
        ax.set_xlim(-0.6, len(NC_METRICS) - 0.4)
        ax.grid(axis="x", visible=False)
        ax.set_ylabel("metric value (log)\n(lower = more collapse)")
        ax.set_title(f"NC metrics at the final epoch: {PROBE_TITLES.get(probe, probe)}")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, title="backbone")

    ax = axes[-1]
    ax.set_title("Few-shot test accuracy (mean over episodes, error bars: 95% confidence interval)")
    if fewshot.empty:
        _no_data(ax, "no few-shot accuracy tables")
        return fig
    configs = sorted({(int(w), int(s)) for w, s in zip(fewshot["n_way"], fewshot["n_shot"], strict=True)})
    fx = np.arange(len(configs))
    fb = [b for b in backbones if b in set(fewshot["backbone"])]
    fwidth = 0.8 / max(len(fb), 1)
    lows = []
    for i, backbone in enumerate(fb):
        rows = fewshot[fewshot["backbone"] == backbone]
        acc = np.full(len(configs), np.nan)
        ci = np.full(len(configs), np.nan)
        for j, (w, s) in enumerate(configs):
            r = rows[(rows["n_way"] == w) & (rows["n_shot"] == s)]
            if not r.empty:
                acc[j] = 100 * float(r["accuracy"].iloc[0])
                ci[j] = 100 * float(r["ci95"].iloc[0])
        pos = fx - 0.4 + fwidth * (i + 0.5)
        ok = np.isfinite(acc)
        err = np.where(np.isfinite(ci), ci, 0.0)
        ax.errorbar(
            pos[ok],
            acc[ok],
            yerr=err[ok],
            fmt="o",
            color=colors[backbone],
            capsize=3,
            markersize=5,
            elinewidth=1.2,
            label=backbone,
        )
        for p, a, c in zip(pos[ok], acc[ok], err[ok], strict=True):
            ax.annotate(
                f"{a:.1f}",
                (p, a + c),
                xytext=(0, 3),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=7,
                color=colors[backbone],
            )
        lows.extend((acc[ok] - err[ok]).tolist())
    lo = min(lows) if lows else 0.0
    ax.set_ylim(max(0.0, np.floor((lo - 3) / 5) * 5), 101.5)
    ax.set_xticks(fx, [f"{w}-way {s}-shot" for w, s in configs])
    ax.set_xlim(-0.6, len(configs) - 0.4)
    ax.grid(axis="x", visible=False)
    ax.set_ylabel("accuracy (%)")
    ax.set_xlabel("test task (classes per episode, labelled images per class)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, title="backbone")
    return fig


# -------------------------------------------------------------------------------------------------- entry


def make_figures(nc_csv: Path, train_logs: Sequence[Path], fewshot: Sequence[Path], out_dir: Path) -> list[Path]:
    """Write every figure of :data:`FIGURE_NAMES` as PNG and PDF into ``out_dir``.

    Returns the written paths, ``{name}.png`` then ``{name}.pdf`` for each name in :data:`FIGURE_NAMES` order.
    Raises :class:`FigureInputError` (a ``ValueError``) naming the file and the column when an input is
    missing or malformed; all inputs are read and checked before any figure is written.
    """
    nc = read_nc_metrics(Path(nc_csv))
    logs = read_train_logs([Path(p) for p in train_logs])
    shots = read_fewshot([Path(p) for p in fewshot])
    backbones = backbone_order(nc, logs, shots)
    colors = _colors(backbones)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with matplotlib.style.context("default"), matplotlib.rc_context(_RC):
        for name in FIGURE_NAMES:
            if name == "training":
                fig = _training_figure(logs, backbones, colors)
            elif name == "summary":
                fig = _summary_figure(nc, shots, backbones, colors)
            else:
                fig = _nc_metric_figure(nc, name, backbones, colors)
            written.extend(_save(fig, out_dir, name))
    return written
