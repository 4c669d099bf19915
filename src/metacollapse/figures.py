"""Figures of the neural-collapse study (owns every file under ``results/figures/``).

This module turns the pipeline's aggregated tables into the report figures; it computes no NC metric itself
(the definitions, which the axis labels in :data:`METRIC_INFO` summarise, live in :mod:`metacollapse.nc`).
It also owns the Snakemake report captions ``workflow/report/{name}.rst``, one per figure name.

Inputs (one row set per run; every table starts with :data:`metacollapse.runs.RUN_COLUMNS`):

* ``results/nc_metrics.csv``: long table ``run, learner, backbone, width, seed, epoch, probe, bn_mode, set,
  metric, mean, std, null`` (``null``: the metric on isotropic Gaussian features with the same class count,
  samples per class and dimension; NaN where there is none; epoch 0 is the untrained network);
* ``results/train_log.csv``: per run and epoch ``n_params, dim, train_loss, train_acc, val_loss, val_acc``
  (further columns are ignored; the epoch-0 row has only the validation columns);
* ``results/fewshot_accuracy.csv``: per run and test task ``n_way, n_shot, accuracy, ci95`` (fractions).

``width`` is empty for backbones without one.

Conventions:

* A *group* is the set of runs that differ only by ``seed`` (same learner, backbone and width). Every curve,
  bar and point is a group's mean over its seeds; its band or error bar is the 95% Student-t interval over
  the seeds (:func:`mean_ci`, :func:`aggregate_seeds`), absent when a group has one seed.
* A *family* is a (learner, backbone) pair; its groups differ by width.
* Colours: each learner gets a colour family (blues, oranges, greens, ...); within it, the groups are shaded
  from light to dark by backbone, then by increasing width. Each backbone gets a marker (circle, square,
  triangle, ...). Learners and backbones are taken in order of first appearance (NC table, training log,
  few-shot table), so the same group has the same colour and marker in every figure.
* "Final epoch" is the last epoch of each run in the rows being compared.

Output: for every name in :data:`FIGURE_NAMES` (fixed by the code, not by the data) a PNG (150 dpi) and a PDF in
``out_dir``: one figure per NC metric (:data:`NC_METRICS`, metric against epoch, one panel per probe, set and
batch-norm mode), ``training`` (loss and accuracy curves), ``summary`` (few-shot accuracy and the paper's
per-episode NC1/NC2 at the final epoch), ``model_size`` (robust and null-relative collapse against the number of
parameters) and ``learners`` (few-shot accuracy against collapse on the novel classes).

The output is deterministic (same inputs give the same bytes): the matplotlib style is reset to its defaults,
the PNG/PDF metadata that carry a version or a date are dropped, and the SVG hash salt is fixed.
Every file is written atomically (temporary file in the same folder, then ``os.replace``, through
:mod:`metacollapse.atomic`). The plotting uses :class:`matplotlib.figure.Figure` directly (Agg rendering),
never ``pyplot``, so it does not touch the process-wide backend and leaks no figures.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import matplotlib
import matplotlib.style
import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator, NullFormatter

from metacollapse.atomic import atomic_path
from metacollapse.nc import CLASSIFIER_METRICS, FEATURE_METRICS
from metacollapse.runs import RUN_COLUMNS

__all__ = [
    "FIGURE_NAMES",
    "GROUP_COLUMNS",
    "NC_METRICS",
    "FigureInputError",
    "Group",
    "aggregate_seeds",
    "group_styles",
    "make_figures",
    "mean_ci",
    "read_fewshot",
    "read_nc_metrics",
    "read_train_log",
    "t_quantile",
    "use_log_scale",
]

#: The NC metrics that get a figure of their own, in the order of :mod:`metacollapse.nc`.
NC_METRICS: tuple[str, ...] = (*FEATURE_METRICS, *CLASSIFIER_METRICS)

#: Every figure written by :func:`make_figures` (``{name}.png`` and ``{name}.pdf``), and every caption
#: ``workflow/report/{name}.rst``. Fixed by the code: the workflow declares these files as outputs.
FIGURE_NAMES: tuple[str, ...] = (*NC_METRICS, "training", "summary", "model_size", "learners")

#: The columns that define a group (runs that differ only by seed).
GROUP_COLUMNS: tuple[str, ...] = ("learner", "backbone", "width")

#: Probes and sets in their preferred panel order; others are appended in order of appearance.
PROBE_ORDER: tuple[str, ...] = ("train_episodes", "val_episodes", "train_classes", "test_classes")
SET_ORDER: tuple[str, ...] = ("support", "query", "all", "protonet", "classifier")

#: A span of more than this many decades (positive values only) switches an axis to log scale.
LOG_SCALE_DECADES = 1.5
#: Confidence level of every interval over seeds.
CONFIDENCE = 0.95

DPI = 150

# Every table starts with the run columns; all are text except these.
_RUN_KINDS: dict[str, str] = {c: {"width": "float", "seed": "int"}.get(c, "str") for c in RUN_COLUMNS}
NC_COLUMNS: dict[str, str] = {
    **_RUN_KINDS,
    "epoch": "int",
    "probe": "str",
    "bn_mode": "str",
    "set": "str",
    "metric": "str",
    "mean": "float",
    "std": "float",
    "null": "float",
}
TRAIN_LOG_COLUMNS: dict[str, str] = {
    **_RUN_KINDS,
    "n_params": "float",
    "dim": "float",
    "epoch": "int",
    "train_loss": "float",
    "train_acc": "float",
    "val_loss": "float",
    "val_acc": "float",
}
FEWSHOT_COLUMNS: dict[str, str] = {
    **_RUN_KINDS,
    "n_way": "int",
    "n_shot": "int",
    "accuracy": "float",
    "ci95": "float",
}


@dataclass(frozen=True)
class MetricInfo:
    """How one NC metric is named on the figures."""

    short: str  # tick label
    title: str  # figure title
    formula: str  # y-axis label, first line (mathtext allowed)
    direction: str = "(lower = more collapse)"


METRIC_INFO: dict[str, MetricInfo] = {
    "nc1": MetricInfo("NC1", "NC1: within-class variability collapse", r"NC1 = tr$(\Sigma_W \Sigma_B^{+})/C$"),
    "nc1_paper": MetricInfo(
        "NC1 (paper)",
        "NC1 as the paper computes it (float32 pseudo-inverse tolerance)",
        r"NC1 = tr$(\Sigma_W \Sigma_B^{+})/C$, float32 pinv",
    ),
    "nc1_quotient": MetricInfo(
        "NC1 quotient",
        "NC1 (quotient form): within- vs between-class scatter",
        r"NC1 quotient = tr$(\Sigma_W)\,/\,$tr$(\Sigma_B)$",
    ),
    "nc2_equinorm": MetricInfo(
        "NC2 equinorm",
        "NC2: equal norms of the centred class means",
        r"NC2 equinorm = std / mean of $\Vert\mu_c - \mu_G\Vert$",
    ),
    "nc2_equiangularity": MetricInfo(
        "NC2 equiangular",
        "NC2: equal angles between the centred class means",
        r"NC2 equiangularity = std of $\cos(M_c, M_{c'})$, $M_c = \mu_c - \mu_G$",
    ),
    "nc2_maxangle": MetricInfo(
        "NC2 max-angle",
        "NC2: maximal angles between the centred class means",
        r"NC2 max-angle = mean $|\cos(M_c, M_{c'}) + 1/(C-1)|$",
    ),
    "nc2_etf": MetricInfo(
        "NC2 ETF",
        "NC2: distance of the class means to a simplex ETF",
        r"NC2 ETF distance $\Vert MM^\top/\Vert MM^\top\Vert_F - $ETF$\Vert_F$",
    ),
    "nc2_etf_rownorm": MetricInfo(
        "NC2 ETF (rows norm.)",
        "NC2: distance to a simplex ETF, class means normalised",
        r"NC2 ETF distance, rows of $M$ normalised",
    ),
    "cdnv": MetricInfo(
        "CDNV",
        "CDNV: class-distance normalised variance",
        r"CDNV = mean $(\sigma_c^2 + \sigma_{c'}^2)\,/\,(2\Vert\mu_c - \mu_{c'}\Vert^2)$",
    ),
    "cdnv_dir": MetricInfo(
        "directional CDNV",
        "Directional CDNV: class variances along the line between two class means",
        r"dir. CDNV = mean $(\sigma_c^2(u) + \sigma_{c'}^2(u))\,/\,(2\Vert\mu_c - \mu_{c'}\Vert^2)$",
    ),
    "erank": MetricInfo(
        "effective rank",
        "Effective rank of the centred class means",
        r"erank = exp(entropy of the eigenvalues of $MM^\top$)",
        "(simplex ETF: min(d, C - 1))",
    ),
    "nc3": MetricInfo(
        "NC3",
        r"NC3 (self-duality): the centred classifier $\tilde W$ aligns with the centred class means $M$",
        r"NC3 = $\Vert \tilde W/\Vert \tilde W\Vert_F - M/\Vert M\Vert_F\Vert_F^2$",
    ),
    "nc4": MetricInfo(
        "NC4",
        "NC4: classifier decisions match the nearest class mean",
        "NC4 = fraction decision ≠ nearest class mean",
    ),
}

#: The paper's per-episode measurement in the ``summary`` figure: NC1 (``nc1_paper`` when the table has it) and
#: the row-normalised NC2, on these probes.
EPISODIC_SUMMARY_PROBES: tuple[str, ...] = ("train_episodes", "val_episodes")
#: Robust metrics of the ``model_size`` figure, drawn when the table has them; ``nc2_etf_rownorm`` is added
#: divided by its null.
MODEL_SIZE_METRICS: tuple[str, ...] = ("nc1_quotient", "cdnv", "cdnv_dir", "erank")
MODEL_SIZE_OPTIONAL: frozenset[str] = frozenset({"cdnv_dir", "erank"})
#: Collapse on the novel classes against which the ``learners`` figure plots few-shot accuracy.
LEARNER_METRICS: tuple[str, ...] = ("cdnv", "nc1_quotient")
#: Preferred few-shot tasks (n_way, n_shot) of the ``learners`` figure.
LEARNER_TASKS: tuple[tuple[int, int], ...] = ((5, 1), (20, 5))

_LEARNER_CMAPS: tuple[str, ...] = ("Blues", "Oranges", "Greens", "Purples", "Reds", "PuRd", "YlGn", "Greys")
_MARKERS: tuple[str, ...] = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
_NULL_COLOR = "0.45"

_RC: dict[str, object] = {
    "svg.hashsalt": "metacollapse",
    "savefig.dpi": DPI,
    "font.size": 9,
    "axes.titlesize": 9.5,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
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
    """An input table of the figures is missing, unreadable, empty or malformed; the message names the file."""


# -------------------------------------------------------------------------------------------- statistics


def _t_two_sided_mass(t: float, dof: int) -> float:
    """P(|T| <= t) for Student's t with an integer number of degrees of freedom (closed-form series)."""
    theta = math.atan(t / math.sqrt(dof))
    cos2 = math.cos(theta) ** 2
    if dof % 2 == 0:
        term, total = 1.0, 1.0
        for k in range(1, dof // 2):
            term *= (2 * k - 1) / (2 * k) * cos2
            total += term
        return math.sin(theta) * total
    if dof == 1:
        return 2.0 * theta / math.pi
    term = math.cos(theta)
    total = term
    for k in range(1, (dof - 1) // 2):
        term *= (2 * k) / (2 * k + 1) * cos2
        total += term
    return 2.0 / math.pi * (theta + math.sin(theta) * total)


@lru_cache(maxsize=256)
def t_quantile(dof: int, confidence: float = CONFIDENCE) -> float:
    """Half-width factor of a two-sided Student-t interval: ``t`` with ``P(|T| <= t) = confidence``.

    ``dof`` is a positive integer (``n - 1`` for ``n`` seeds); e.g. ``t_quantile(2) = 4.3027`` at 95%.
    """
    if int(dof) != dof or dof < 1:
        raise ValueError(f"degrees of freedom must be a positive integer, got {dof!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    dof = int(dof)
    lo, hi = 0.0, 1.0
    while _t_two_sided_mass(hi, dof) < confidence:
        lo, hi = hi, 2.0 * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _t_two_sided_mass(mid, dof) < confidence:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-15 * hi:
            break
    return 0.5 * (lo + hi)


def mean_ci(values: Iterable[float], confidence: float = CONFIDENCE) -> tuple[float, float, int]:
    """Mean over seeds, half-width of its two-sided Student-t interval, and the number of values used.

    Non-finite values are dropped. The half-width is ``t_quantile(n - 1) * s / sqrt(n)`` with ``s`` the sample
    standard deviation (``ddof=1``), in float64; it is NaN for a single value, and the mean is NaN for none.
    """
    arr = np.asarray(list(values), dtype=np.float64).ravel()
    arr = arr[np.isfinite(arr)]
    n = int(arr.size)
    if n == 0:
        return math.nan, math.nan, 0
    mean = float(arr.mean())
    if n == 1:
        return mean, math.nan, 1
    return mean, t_quantile(n - 1, confidence) * float(arr.std(ddof=1)) / math.sqrt(n), n


def aggregate_seeds(df: pd.DataFrame, by: Sequence[str], value: str, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Per combination of ``by``: ``mean``, ``ci95`` (half-width, as :func:`mean_ci`) and ``n`` of ``value``.

    Each row of ``df`` is one run's value (one seed); rows are sorted by ``by``. Non-finite values are dropped,
    combinations without any finite value keep ``mean`` NaN and ``n`` 0.
    """
    by = list(by)
    vals = pd.to_numeric(df[value], errors="coerce").astype(np.float64)
    vals = vals.where(np.isfinite(vals))
    grouped = vals.groupby([df[c] for c in by], sort=True, dropna=False)
    out = pd.DataFrame({"mean": grouped.mean(), "sd": grouped.std(ddof=1), "n": grouped.count()})
    factor = np.array([t_quantile(int(n) - 1, confidence) if n >= 2 else np.nan for n in out["n"]], dtype=float)
    out["ci95"] = factor * out["sd"].to_numpy() / np.sqrt(np.maximum(out["n"].to_numpy(), 1))
    out = out.reset_index()
    out.columns = [*by, "mean", "sd", "n", "ci95"]
    return out[[*by, "mean", "ci95", "n"]].assign(n=lambda d: d["n"].astype(int))


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


# ----------------------------------------------------------------------------------------------- reading


def _read_csv(path: Path, columns: dict[str, str], what: str) -> pd.DataFrame:
    """Read ``path`` and check that it has ``columns`` of the right kinds; errors name the file and column.

    Kinds: ``str`` (non-empty), ``int`` (required integer), ``float`` (empty or ``nan`` reads as NaN).
    Other columns are dropped.
    """
    path = Path(path)
    if not path.is_file():
        raise FigureInputError(f"{path}: {what} not found (expected columns: {', '.join(columns)})")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError as exc:
        raise FigureInputError(f"{path}: {what} is empty (expected columns: {', '.join(columns)})") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        raise FigureInputError(f"{path}: {what} is not a readable CSV file: {exc}") from exc
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
        raw = df[col].astype(str).str.strip()
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
        out[col] = num.astype(np.int64) if kind == "int" else num.astype(np.float64)
    _check_run_identity(out, path, what)
    return out


def _width_key(width: pd.Series) -> pd.Series:
    return width.map(lambda w: "" if not np.isfinite(w) else f"{w:g}")


def _check_run_identity(df: pd.DataFrame, path: Path, what: str) -> None:
    """A run name must stand for one learner, backbone, width and seed."""
    ident = df[["run", "learner", "backbone", "seed"]].astype(str).assign(width=_width_key(df["width"]))
    counts = ident.drop_duplicates().groupby("run", sort=False).size()
    if (counts > 1).any():
        run = counts.index[int(np.flatnonzero(counts.to_numpy() > 1)[0])]
        found = ident[ident["run"] == run].drop_duplicates().drop(columns="run").to_dict("records")
        raise FigureInputError(f"{path}: {what} gives run {run!r} several identities: {found}")


def _reject_duplicates(df: pd.DataFrame, key: list[str], where: str, what: str) -> None:
    dup = df.duplicated(key, keep=False)
    if dup.any():
        first = df.loc[dup, key].iloc[0].to_dict()
        raise FigureInputError(f"{where}: {what} has duplicate rows for {first}")


def read_nc_metrics(path: Path) -> pd.DataFrame:
    """Read and validate ``nc_metrics.csv`` (one row per run, epoch, probe, BN mode, set and metric)."""
    df = _read_csv(path, NC_COLUMNS, "NC metrics table")
    _reject_duplicates(df, ["run", "epoch", "probe", "bn_mode", "set", "metric"], str(path), "NC metrics table")
    return df.reset_index(drop=True)


def read_train_log(path: Path) -> pd.DataFrame:
    """Read the aggregated training log; a resumed run may log an epoch twice: the last row wins."""
    df = _read_csv(path, TRAIN_LOG_COLUMNS, "training log")
    return df.drop_duplicates(["run", "epoch"], keep="last").reset_index(drop=True)


def read_fewshot(path: Path) -> pd.DataFrame:
    """Read the aggregated few-shot accuracy table (``accuracy`` and ``ci95`` are fractions)."""
    df = _read_csv(path, FEWSHOT_COLUMNS, "few-shot accuracy table")
    _reject_duplicates(df, ["run", "n_way", "n_shot"], str(path), "few-shot accuracy table")
    return df.reset_index(drop=True)


def _as_paths(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[Path]:
    if isinstance(paths, (str, os.PathLike)):
        return [Path(paths)]
    return [Path(p) for p in paths]


def _read_all(paths: list[Path], reader, key: list[str], what: str) -> pd.DataFrame:
    """Concatenate one table read from each path; duplicate keys across the files are an error."""
    if not paths:
        raise FigureInputError(f"no {what} given")
    out = pd.concat([reader(p) for p in paths], ignore_index=True)
    if len(paths) > 1:
        _reject_duplicates(out, key, ", ".join(str(p) for p in paths), what)
    return out


# ------------------------------------------------------------------------------------------ groups, style


@dataclass(frozen=True)
class Group:
    """One group of runs (same learner, backbone and width) and its style in every figure."""

    key: str  # label, e.g. "protonet · conv4 w64"
    learner: str
    backbone: str
    width: float  # NaN for backbones without a width
    family: str  # "learner · backbone"
    color: str
    marker: str


def _ordered_unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _ordered(values: Iterable[str], preferred: Sequence[str]) -> list[str]:
    seen = _ordered_unique(values)
    return [v for v in preferred if v in seen] + [v for v in seen if v not in preferred]


def _with_groups(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with the columns ``group`` (learner · backbone wWIDTH) and ``family`` (learner · backbone)."""
    out = df.copy()
    width = _width_key(out["width"])
    out["family"] = out["learner"] + " · " + out["backbone"]
    out["group"] = out["family"] + np.where(width == "", "", " w" + width)
    return out


def group_styles(*tables: pd.DataFrame) -> dict[str, Group]:
    """The groups of the tables (which carry ``group``), ordered and styled as the module docstring says."""
    frames = [t[["learner", "backbone", "width", "family", "group"]] for t in tables if not t.empty]
    if not frames:
        return {}
    rows = pd.concat(frames, ignore_index=True).drop_duplicates("group")
    learners = _ordered_unique(rows["learner"])
    backbones = _ordered_unique(rows["backbone"])
    order = sorted(
        rows.itertuples(index=False),
        key=lambda r: (
            learners.index(r.learner),
            backbones.index(r.backbone),
            np.isfinite(r.width),
            r.width if np.isfinite(r.width) else 0.0,
        ),
    )
    styles: dict[str, Group] = {}
    for li, learner in enumerate(learners):
        mine = [r for r in order if r.learner == learner]
        cmap = colormaps[_LEARNER_CMAPS[li % len(_LEARNER_CMAPS)]]
        shades = [0.75] if len(mine) == 1 else np.linspace(0.45, 0.95, len(mine)).tolist()
        for r, shade in zip(mine, shades, strict=True):
            styles[r.group] = Group(
                key=r.group,
                learner=r.learner,
                backbone=r.backbone,
                width=float(r.width),
                family=r.family,
                color=to_hex(cmap(shade)),
                marker=_MARKERS[backbones.index(r.backbone) % len(_MARKERS)],
            )
    return {r.group: styles[r.group] for r in order}


def _seeds_label(group: Group, n: int, note: str = "") -> str:
    return f"{group.key} ({note}{n} seed{'' if n == 1 else 's'})"


def _group_handle(group: Group, label: str, line: bool = True) -> Line2D:
    return Line2D(
        [], [], color=group.color, marker=group.marker, linewidth=1.8 if line else 0.0, markersize=5, label=label
    )


# ----------------------------------------------------------------------------------------------- drawing


def _save(fig: Figure, out_dir: Path, name: str) -> list[Path]:
    """Write ``fig`` as ``{name}.png`` and ``{name}.pdf`` atomically (:func:`metacollapse.atomic.atomic_path`)."""
    written = []
    for ext, metadata in (("png", _PNG_METADATA), ("pdf", _PDF_METADATA)):
        target = out_dir / f"{name}.{ext}"
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format=ext, dpi=DPI, metadata=metadata)
        written.append(target)
        # The PDF reuses the panel positions of the PNG: the layout is the costliest part of a draw.
        fig.set_layout_engine("none")
    return written


def _metric_label(metric: str, relative: bool = False) -> str:
    info = METRIC_INFO.get(metric)
    if relative:
        short = info.short if info else metric
        return f"{short} / null\n(1 = isotropic Gaussian features)"
    return f"{info.formula}\n{info.direction}" if info else metric


def _no_data(ax: Axes, text: str = "no data") -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _block_legend(fig: Figure, blocks: Sequence[Sequence[Line2D | Patch]], max_cols: int = 4) -> None:
    """One figure legend below the panels, each block (groups, line styles) on its own row(s).

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


def _panel_keys(rows: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(probe, set, bn_mode) of the rows, in probe order, then set order, then BN mode."""
    keys = rows[["probe", "set", "bn_mode"]].drop_duplicates()
    probes = _ordered(keys["probe"], PROBE_ORDER)
    sets = _ordered(keys["set"], SET_ORDER)
    triples = [(str(p), str(s), str(b)) for p, s, b in keys.itertuples(index=False)]
    return sorted(triples, key=lambda t: (probes.index(t[0]), sets.index(t[1]), t[2]))


def _panel_title(probe: str, set_name: str, bn_mode: str) -> str:
    return f"{probe} · {set_name} · BN {bn_mode}"


def _final_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of each run's last epoch among ``df``."""
    if df.empty:
        return df
    return df[df["epoch"] == df.groupby("run")["epoch"].transform("max")]


def _band(
    ax: Axes, x: np.ndarray, y: np.ndarray, ci: np.ndarray, color: str, log: bool, floor_zero: bool = True
) -> bool:
    """Shade ``y ± ci`` where ``ci`` is finite; NC values are >= 0, so the band stops at 0 (log axis: y/10)."""
    ok = np.isfinite(ci) & np.isfinite(y)
    if not ok.any():
        return False
    lo = y[ok] - ci[ok]
    if log:
        lo = np.maximum(lo, y[ok] / 10)
    elif floor_zero:
        lo = np.maximum(lo, 0.0)
    ax.fill_between(x[ok], lo, y[ok] + ci[ok], color=color, alpha=0.18, linewidth=0)
    return True


def _error(mean: np.ndarray, ci: np.ndarray, log: bool) -> np.ndarray:
    """Asymmetric error bars ``[lower, upper]``; NaN half-widths draw none, a log axis stops at mean/10."""
    ci = np.where(np.isfinite(ci), ci, 0.0)
    lower = np.minimum(ci, 0.9 * mean) if log else ci
    return np.vstack([lower, ci])


# ------------------------------------------------------------------------------------------------ figures


def _nc_metric_figure(nc: pd.DataFrame, metric: str, groups: dict[str, Group]) -> Figure:
    data = nc[nc["metric"] == metric]
    panels = _panel_keys(data)
    nrows, ncols = _grid(max(len(panels), 1))
    fig = Figure(figsize=(10.5 if ncols == 2 else 6.5, 2.9 * nrows + 1.8), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    info = METRIC_INFO.get(metric)
    fig.suptitle(f"{info.title if info else metric}, against epoch (mean over seeds)", fontsize=11)
    if not panels:
        _no_data(axes[0], f"no {metric} rows in the NC metrics table")
    seeds: dict[str, int] = {}
    has_band = shared_null = group_null = False
    for k, (ax, (probe, set_name, bn_mode)) in enumerate(zip(axes, panels, strict=False)):
        ax.set_title(_panel_title(probe, set_name, bn_mode))
        pdata = data[(data["probe"] == probe) & (data["set"] == set_name) & (data["bn_mode"] == bn_mode)]
        agg = aggregate_seeds(pdata, ["group", "epoch"], "mean")
        nulls = aggregate_seeds(pdata, ["group"], "null")
        nulls = nulls[np.isfinite(nulls["mean"])]
        log = use_log_scale([*agg["mean"], *nulls["mean"]])
        drawn = False
        for key, group in groups.items():
            rows = agg[(agg["group"] == key) & np.isfinite(agg["mean"])]
            if rows.empty:
                continue
            drawn = True
            seeds[key] = max(seeds.get(key, 0), int(pdata.loc[pdata["group"] == key, "run"].nunique()))
            x, y, ci = (rows[c].to_numpy(dtype=float) for c in ("epoch", "mean", "ci95"))
            ax.plot(
                x,
                y,
                color=group.color,
                marker=group.marker if len(x) <= 12 else None,
                linewidth=1.5,
                markersize=3.5,
            )
            has_band |= _band(ax, x, y, ci, group.color, log)
        if len({f"{v:.4g}" for v in nulls["mean"]}) == 1:
            ax.axhline(float(nulls["mean"].iloc[0]), color=_NULL_COLOR, linestyle="--", linewidth=1.1)
            shared_null = True
        else:
            for key, value in zip(nulls["group"], nulls["mean"], strict=True):
                ax.axhline(float(value), color=groups[key].color, linestyle="--", linewidth=0.9, alpha=0.85)
                group_null = True
        if not drawn and nulls.empty:
            _no_data(ax, f"no finite {metric} values")
            continue
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("epoch (0 = untrained)")
        left = k % ncols == 0
        ax.set_ylabel(_metric_label(metric) if left else (info.short if info else metric))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes[len(panels) :] if panels else axes[1:]:
        ax.set_visible(False)

    group_handles = [_group_handle(g, _seeds_label(g, seeds[k])) for k, g in groups.items() if k in seeds]
    style_handles: list[Line2D | Patch] = []
    if seeds:
        style_handles.append(Line2D([], [], color="0.2", linewidth=1.5, label="mean over seeds"))
    if has_band:
        style_handles.append(Patch(color="0.5", alpha=0.3, label="95% CI over seeds (Student t)"))
    if shared_null:
        style_handles.append(
            Line2D([], [], color=_NULL_COLOR, linestyle="--", label="null: isotropic Gaussian features")
        )
    if group_null:
        style_handles.append(
            Line2D([], [], color="0.2", linestyle="--", linewidth=0.9, label="null of each group (its colour)")
        )
    _block_legend(fig, [group_handles, style_handles])
    return fig


def _training_figure(logs: pd.DataFrame, groups: dict[str, Group]) -> Figure:
    fig = Figure(figsize=(10.5, 7.0), layout="constrained")
    axes = fig.subplots(2, 2, sharex=True, squeeze=False)
    fig.suptitle("Training curves (episodic loss and accuracy; mean over seeds, band: 95% CI)", fontsize=11)
    panels = [
        (axes[0, 0], "train_loss", "training loss", "loss (cross-entropy)", 1.0),
        (axes[0, 1], "val_loss", "validation loss", "loss (cross-entropy)", 1.0),
        (axes[1, 0], "train_acc", "training accuracy", "accuracy (%)", 100.0),
        (axes[1, 1], "val_acc", "validation accuracy", "accuracy (%)", 100.0),
    ]
    seeds: dict[str, int] = {}
    for ax, col, title, ylabel, scale in panels:
        ax.set_title(title)
        agg = aggregate_seeds(logs, ["group", "epoch"], col)
        any_line = False
        for key, group in groups.items():
            rows = agg[(agg["group"] == key) & np.isfinite(agg["mean"])]
            if rows.empty:
                continue
            any_line = True
            seeds[key] = max(seeds.get(key, 0), int(rows["n"].max()))
            x = rows["epoch"].to_numpy(dtype=float)
            y = rows["mean"].to_numpy(dtype=float) * scale
            ax.plot(x, y, color=group.color, marker=group.marker if len(x) <= 12 else None, linewidth=1.5, ms=3.5)
            _band(ax, x, y, rows["ci95"].to_numpy(dtype=float) * scale, group.color, log=False)
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
    _block_legend(fig, [[_group_handle(g, _seeds_label(g, seeds[k])) for k, g in groups.items() if k in seeds]])
    return fig


def _fewshot_by_group(shots: pd.DataFrame) -> pd.DataFrame:
    """Accuracy per group and task in percent: mean over seeds, 95% t-interval over seeds.

    A group with a single seed keeps that run's own 95% interval over its test episodes (column ``over``
    says which interval a row carries: ``seeds`` or ``episodes``).
    """
    agg = aggregate_seeds(shots, ["group", "n_way", "n_shot"], "accuracy")
    single = shots.groupby(["group", "n_way", "n_shot"], sort=True)["ci95"].first().rename("episode_ci")
    agg = agg.merge(single.reset_index(), on=["group", "n_way", "n_shot"], how="left")
    one = agg["n"] == 1
    agg["over"] = np.where(one, "episodes", "seeds")
    agg["ci95"] = np.where(one, agg["episode_ci"], agg["ci95"])
    agg["mean"] *= 100.0
    agg["ci95"] *= 100.0
    return agg.drop(columns="episode_ci")


def _episodic_summary(ax: Axes, nc: pd.DataFrame, groups: dict[str, Group]) -> None:
    """Grouped bars of the paper's per-episode NC1 and NC2 at each run's final epoch, mean and CI over seeds."""
    nc1 = "nc1_paper" if (nc["metric"] == "nc1_paper").any() else "nc1"
    metrics = (nc1, "nc2_etf_rownorm")
    rows = nc[
        nc["probe"].isin(EPISODIC_SUMMARY_PROBES) & nc["set"].isin(["support", "query"]) & nc["metric"].isin(metrics)
    ]
    rows = _final_rows(rows)
    blocks = sorted(
        {(str(p), str(b)) for p, b in zip(rows["probe"], rows["bn_mode"], strict=True)},
        key=lambda pb: (EPISODIC_SUMMARY_PROBES.index(pb[0]), pb[1]),
    )
    slots = [(p, b, m, s) for p, b in blocks for m in metrics for s in ("support", "query")]
    ax.set_title(
        f"The paper's measurement at the final epoch: per-episode {METRIC_INFO[nc1].short} and NC2 "
        "(rows norm.); mean over seeds, error bar: 95% CI over seeds"
    )
    if not slots:
        _no_data(ax, "no per-episode rows (train_episodes / val_episodes, support / query) in the NC table")
        return
    agg = aggregate_seeds(rows, ["group", "probe", "bn_mode", "metric", "set"], "mean").set_index(
        ["group", "probe", "bn_mode", "metric", "set"]
    )
    present = [g for g in groups.values() if (rows["group"] == g.key).any()]
    x = np.arange(len(slots))
    width = 0.8 / max(len(present), 1)
    any_bar = False
    for i, group in enumerate(present):
        grows = rows[rows["group"] == group.key]
        first, last = int(grows["epoch"].min()), int(grows["epoch"].max())
        epoch = f"epoch {last}" if first == last else f"epochs {first}–{last}"
        mean = np.array([agg["mean"].get((group.key, *s), np.nan) for s in slots], dtype=float)
        ci = np.array([agg["ci95"].get((group.key, *s), np.nan) for s in slots], dtype=float)
        ok = np.isfinite(mean) & (mean > 0)
        any_bar |= bool(ok.any())
        pos = x - 0.4 + width * (i + 0.5)
        ax.bar(
            pos[ok],
            mean[ok],
            width=width * 0.92,
            color=group.color,
            yerr=_error(mean[ok], ci[ok], log=True),
            capsize=1.5,
            error_kw={"elinewidth": 0.8},
            label=_seeds_label(group, int(grows["run"].nunique()), f"{epoch}, "),
        )
    if any_bar:
        ax.set_yscale("log")
    short = {m: (METRIC_INFO[m].short if m in METRIC_INFO else m).replace(" (", "\n(") for m in metrics}
    ax.set_xticks(x, [f"{short[m]}\n{s}" for _, _, m, s in slots], fontsize=7.5)
    per_block = len(metrics) * 2
    for j, (probe, bn_mode) in enumerate(blocks):
        ax.annotate(
            f"{probe} · BN {bn_mode}",
            (j * per_block + (per_block - 1) / 2, 0),
            xycoords=("data", "axes fraction"),
            xytext=(0, -28),
            textcoords="offset points",
            ha="center",
            va="top",
            fontsize=8.5,
            fontweight="bold",
        )
    ax.set_xlim(-0.6, len(slots) - 0.4)
    ax.grid(axis="x", visible=False)
    ax.set_ylabel("metric value (log)\n(lower = more collapse)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=7.5)


def _fewshot_panel(ax: Axes, shots: pd.DataFrame, groups: dict[str, Group]) -> None:
    ax.set_title("Few-shot test accuracy: mean over seeds, error bar 95% CI over seeds (one seed: over episodes)")
    if shots.empty:
        _no_data(ax, "no few-shot accuracy rows")
        return
    fs = _fewshot_by_group(shots)
    tasks = sorted({(int(w), int(s)) for w, s in zip(fs["n_way"], fs["n_shot"], strict=True)})
    present = [g for g in groups.values() if (fs["group"] == g.key).any()]
    fx = np.arange(len(tasks))
    width = 0.8 / max(len(present), 1)
    lows = []
    for i, group in enumerate(present):
        rows = fs[fs["group"] == group.key].set_index(["n_way", "n_shot"])
        acc = np.array([rows["mean"].get(t, np.nan) for t in tasks], dtype=float)
        ci = np.array([rows["ci95"].get(t, np.nan) for t in tasks], dtype=float)
        err = np.where(np.isfinite(ci), ci, 0.0)
        ok = np.isfinite(acc)
        pos = fx - 0.4 + width * (i + 0.5)
        n = int(rows["n"].max())
        ax.errorbar(
            pos[ok],
            acc[ok],
            yerr=err[ok],
            fmt=group.marker,
            color=group.color,
            capsize=2.5,
            markersize=4.5,
            elinewidth=1.1,
            label=_seeds_label(group, n),
        )
        lows.extend((acc[ok] - err[ok]).tolist())
    lo = min(lows) if lows else 0.0
    ax.set_ylim(max(0.0, np.floor((lo - 3) / 5) * 5), 101.5)
    ax.set_xticks(fx, [f"{w}-way {s}-shot" for w, s in tasks])
    ax.set_xlim(-0.6, len(tasks) - 0.4)
    ax.grid(axis="x", visible=False)
    ax.set_ylabel("accuracy (%)")
    ax.set_xlabel("test task (classes per episode, labelled images per class)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=7.5)


def _summary_figure(nc: pd.DataFrame, shots: pd.DataFrame, groups: dict[str, Group]) -> Figure:
    fig = Figure(figsize=(13, 9.0), layout="constrained")
    axes = fig.subplots(2, 1, squeeze=False, gridspec_kw={"height_ratios": [1.15, 1.0]}).ravel()
    fig.suptitle("Final-epoch comparison of the groups (learner · backbone · width)", fontsize=11)
    _episodic_summary(axes[0], nc, groups)
    _fewshot_panel(axes[1], shots, groups)
    return fig


def _model_size_metrics(rows: pd.DataFrame) -> list[tuple[str, bool]]:
    """(metric, divided by its null) of the ``model_size`` figure; optional metrics only when present."""
    present = set(rows["metric"])
    out = [(m, False) for m in MODEL_SIZE_METRICS if m not in MODEL_SIZE_OPTIONAL or m in present]
    return [*out, ("nc2_etf_rownorm", True)]


def _model_size_figure(nc: pd.DataFrame, logs: pd.DataFrame, groups: dict[str, Group]) -> Figure:
    probes = ("train_classes", "test_classes")
    rows = nc[nc["probe"].isin(probes) & (nc["set"] == "all")]
    metrics = _model_size_metrics(rows)
    size = logs.sort_values(["run", "epoch"], kind="stable").groupby("run")[["n_params", "dim"]].last()
    fig = Figure(figsize=(10.5, 2.7 * len(metrics) + 1.8), layout="constrained")
    axes = fig.subplots(len(metrics), len(probes), squeeze=False)
    fig.suptitle(
        "Collapse at the final epoch against model size (mean over seeds, error bar: 95% CI; label: embedding "
        "dimension d)",
        fontsize=11,
    )
    families: dict[str, tuple[Group, set[int]]] = {}
    ref_line = False
    for r, (metric, relative) in enumerate(metrics):
        for c, probe in enumerate(probes):
            ax = axes[r, c]
            bn = _ordered_unique(rows.loc[(rows["probe"] == probe), "bn_mode"])
            title = f"{probe} · all · BN {', '.join(bn) if bn else '?'}"
            ax.set_title(
                f"{METRIC_INFO[metric].short if metric in METRIC_INFO else metric}"
                f"{' / null' if relative else ''}: {title}"
            )
            mrows = _final_rows(rows[(rows["probe"] == probe) & (rows["metric"] == metric)])
            if relative:
                null = mrows["null"].where(mrows["null"] > 0)
                mrows = mrows.assign(mean=mrows["mean"] / null)
            mrows = mrows.join(size, on="run")
            agg = aggregate_seeds(mrows, ["group"], "mean")
            params = mrows.groupby("group")["n_params"].mean()
            dims = mrows.groupby("group")["dim"].agg(lambda d: sorted({int(v) for v in d if np.isfinite(v)}))
            agg = agg.assign(
                n_params=agg["group"].map(params).astype(float),
                dims=agg["group"].map(dims),
            )
            agg = agg[np.isfinite(agg["mean"]) & np.isfinite(agg["n_params"]) & (agg["n_params"] > 0)]
            if agg.empty:
                what = f"{metric} / null (no positive null)" if relative else metric
                _no_data(ax, f"no {what} with a parameter count")
                continue
            log = use_log_scale(agg["mean"])
            for family in _ordered_unique(groups[k].family for k in groups if k in set(agg["group"])):
                fam = agg[agg["group"].map(lambda k, f=family: groups[k].family == f)].sort_values("n_params")
                last = groups[fam["group"].iloc[-1]]
                ax.plot(fam["n_params"], fam["mean"], color=last.color, linewidth=1.2, alpha=0.8)
                known = families.setdefault(family, (last, set()))
                for row in fam.itertuples(index=False):
                    group = groups[row.group]
                    known[1].update(row.dims or [])
                    mean = np.array([row.mean])
                    ax.errorbar(
                        [row.n_params],
                        mean,
                        yerr=_error(mean, np.array([row.ci95]), log),
                        fmt=group.marker,
                        color=group.color,
                        markersize=5,
                        capsize=2.5,
                        elinewidth=1.0,
                    )
                    if row.dims:
                        ax.annotate(
                            "d=" + "/".join(str(d) for d in row.dims),
                            (row.n_params, row.mean),
                            xytext=(4, 3),
                            textcoords="offset points",
                            fontsize=6.5,
                            color="0.25",
                        )
            if relative:
                ax.axhline(1.0, color=_NULL_COLOR, linestyle="--", linewidth=1.0)
                ref_line = True
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels of a narrow range overlap
            if log:
                ax.set_yscale("log")
            ax.set_xlabel("parameters of the backbone (log)")
            if c == 0:
                ax.set_ylabel(_metric_label(metric, relative))
    handles: list[Line2D | Patch] = []
    for family, (group, dims) in families.items():
        d = ", ".join(str(v) for v in sorted(dims))
        handles.append(_group_handle(group, f"{family} (d = {d})" if d else family))
    style = [Line2D([], [], color=_NULL_COLOR, linestyle="--", label="null (ratio 1)")] if ref_line else []
    _block_legend(fig, [handles, style])
    return fig


def _learner_tasks(fs: pd.DataFrame) -> list[tuple[int, int]]:
    present = sorted({(int(w), int(s)) for w, s in zip(fs["n_way"], fs["n_shot"], strict=True)})
    preferred = [t for t in LEARNER_TASKS if t in present]
    return preferred or present[: len(LEARNER_TASKS)]


def _learners_figure(nc: pd.DataFrame, shots: pd.DataFrame, groups: dict[str, Group]) -> Figure:
    rows = nc[(nc["probe"] == "test_classes") & (nc["set"] == "all") & nc["metric"].isin(LEARNER_METRICS)]
    fs = _fewshot_by_group(shots) if not shots.empty else pd.DataFrame(columns=["group", "n_way", "n_shot"])
    tasks = _learner_tasks(fs)
    nrows = max(len(tasks), 1)
    fig = Figure(figsize=(10.5, 3.6 * nrows + 1.8), layout="constrained")
    axes = fig.subplots(nrows, len(LEARNER_METRICS), squeeze=False)
    bn = _ordered_unique(rows["bn_mode"])
    fig.suptitle(
        "Few-shot accuracy against collapse of the novel classes (test_classes · all · BN "
        f"{', '.join(bn) if bn else '?'}; final epoch; mean and 95% CI over seeds)",
        fontsize=11,
    )
    seeds: dict[str, int] = {}
    for c, metric in enumerate(LEARNER_METRICS):
        final = _final_rows(rows[rows["metric"] == metric])
        xs = aggregate_seeds(final, ["group"], "mean").set_index("group")
        for r in range(nrows):
            ax = axes[r, c]
            task = tasks[r] if tasks else None
            ax.set_title(f"{task[0]}-way {task[1]}-shot against {metric}" if task else f"against {metric}")
            if task is None or xs.empty:
                _no_data(ax, "no few-shot rows" if task is None else f"no {metric} on test_classes · all")
                continue
            ys = fs[(fs["n_way"] == task[0]) & (fs["n_shot"] == task[1])].set_index("group")
            keys = [k for k in groups if k in xs.index and k in ys.index and np.isfinite(xs.at[k, "mean"])]
            keys = [k for k in keys if np.isfinite(ys.at[k, "mean"])]
            if not keys:
                _no_data(ax, "no group has both values")
                continue
            xv = np.array([xs.at[k, "mean"] for k in keys], dtype=float)
            log = use_log_scale(xv)
            for k, x in zip(keys, xv, strict=True):
                group = groups[k]
                seeds[k] = max(seeds.get(k, 0), int(xs.at[k, "n"]))
                yci = ys.at[k, "ci95"]
                ax.errorbar(
                    [x],
                    [ys.at[k, "mean"]],
                    xerr=_error(np.array([x]), np.array([xs.at[k, "ci95"]]), log),
                    yerr=[[yci if np.isfinite(yci) else 0.0]] * 2,
                    fmt=group.marker,
                    color=group.color,
                    markersize=6,
                    capsize=2.5,
                    elinewidth=1.0,
                )
            if log:
                ax.set_xscale("log")
            ax.set_xlabel(f"{_metric_label(metric)}, novel classes")
            ax.set_ylabel("accuracy (%)")
    _block_legend(
        fig, [[_group_handle(g, _seeds_label(g, seeds[k]), line=False) for k, g in groups.items() if k in seeds]]
    )
    return fig


# -------------------------------------------------------------------------------------------------- entry


PathArg = str | os.PathLike[str]


def make_figures(
    nc_csv: PathArg,
    train_log_csv: PathArg | Sequence[PathArg],
    fewshot_csv: PathArg | Sequence[PathArg],
    out_dir: PathArg,
    names: Sequence[str] = FIGURE_NAMES,
) -> list[Path]:
    """Write the figures ``names`` (default: every one of :data:`FIGURE_NAMES`) as PNG and PDF into ``out_dir``.

    ``train_log_csv`` and ``fewshot_csv`` are the aggregated tables (a sequence of such tables is concatenated).
    Returns the written paths, ``{name}.png`` then ``{name}.pdf`` for each name in :data:`FIGURE_NAMES` order.
    Raises :class:`FigureInputError` (a ``ValueError``) naming the file and the column when an input is
    missing, unreadable or malformed; all inputs are read and checked before any figure is written.
    An unknown name is a ``ValueError``.
    """
    unknown = [n for n in names if n not in FIGURE_NAMES]
    if unknown:
        raise ValueError(f"unknown figure name(s) {unknown}; known: {', '.join(FIGURE_NAMES)}")
    nc = _with_groups(read_nc_metrics(Path(nc_csv)))
    logs = _with_groups(_read_all(_as_paths(train_log_csv), read_train_log, ["run", "epoch"], "training log"))
    shots = _with_groups(
        _read_all(_as_paths(fewshot_csv), read_fewshot, ["run", "n_way", "n_shot"], "few-shot accuracy table")
    )
    groups = group_styles(nc, logs, shots)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with matplotlib.style.context("default"), matplotlib.rc_context(_RC):
        for name in (n for n in FIGURE_NAMES if n in names):
            if name == "training":
                fig = _training_figure(logs, groups)
            elif name == "summary":
                fig = _summary_figure(nc, shots, groups)
            elif name == "model_size":
                fig = _model_size_figure(nc, logs, groups)
            elif name == "learners":
                fig = _learners_figure(nc, shots, groups)
            else:
                fig = _nc_metric_figure(nc, name, groups)
            written.extend(_save(fig, out_dir, name))
    return written
