"""Figures of the neural-collapse study: every file under ``results/figures/``, described by ``workflow/report/*.rst``.

A *group* is the set of runs that differ only by seed: by every key of the runs table that varies across runs
except ``seed`` (learner, backbone and width without one). Values are means over a group's seeds; intervals are
95% over seeds when a group has several, else the run's own interval where the table has one. Collapse is shown
against its null (the metric on isotropic Gaussian features of the same shape). Output is byte-deterministic and
written atomically; drawing uses :class:`matplotlib.figure.Figure` directly, never ``pyplot``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
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
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

from metacollapse.atomic import atomic_path
from metacollapse.nc import CLASSIFIER_METRICS, FEATURE_METRICS
from metacollapse.runs import RUN_COLUMNS
from metacollapse.stats import aggregate_seeds
from metacollapse.tables import RUN_COLUMN_KEYS, read_table, varying_keys


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
    "gnc2": MetricInfo(
        "GNC2",
        "Generalised NC2 (Wu & Papyan 2024): hyperspherical uniformity of the class means",
        r"GNC2 = energy of the unit class means $M_c/\Vert M_c\Vert$",
        "(lower = more uniform)",
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

#: The NC metrics of :mod:`metacollapse.nc`, in its order.
NC_METRICS: tuple[str, ...] = (*FEATURE_METRICS, *CLASSIFIER_METRICS)
#: One figure per metric the NC stage computes or the figures can name (a metric may be named before it is computed).
METRIC_FIGURES: tuple[str, ...] = tuple(dict.fromkeys((*NC_METRICS, *METRIC_INFO)))
#: Every figure :func:`make_figures` writes (``{name}.png``, ``{name}.pdf``), each with ``workflow/report/{name}.rst``.
FIGURE_NAMES: tuple[str, ...] = (*METRIC_FIGURES, "training", "summary", "model_size", "learners", "layers")

#: Probes, sets and few-shot splits in their preferred order; others follow in order of appearance.
PROBE_ORDER = (
    "train_episodes",
    "val_episodes",
    "train_classes",
    "test_classes",
    "fashion_train_classes",
    "fashion_test_classes",
)
SET_ORDER = ("support", "query", "all", "protonet", "classifier")
SPLIT_ORDER = ("test", "fashion_test")
#: The layer of the final embedding (the NC table's ``layer``); the figures other than ``layers`` show only it.
EMBEDDING = "embedding"
#: Short names of run-spec keys in a group label.
KEY_SHORT = {"train.weight_decay": "wd", "train.lr": "lr"}

#: ``summary``: the paper's per-episode NC1 (``nc1_paper`` when present) and row-normalised NC2, over the null.
SUMMARY_METRICS = ("nc1_paper", "nc2_etf_rownorm")
#: ``model_size``: metrics over their null against the parameter count (those present in the table).
MODEL_SIZE_METRICS = ("nc1_quotient", "cdnv", "cdnv_dir", "erank", "nc2_etf_rownorm")
#: ``learners``: collapse of the classes of the few-shot split against which accuracy is plotted; preferred tasks.
LEARNER_METRICS = ("cdnv", "nc1_quotient")
LEARNER_TASKS = ((5, 1), (20, 5))
#: ``layers``: (metric, over its null) against depth.
LAYER_METRICS = (("nc1_quotient", True), ("cdnv", False), ("nc2_etf_rownorm", True), ("gnc2", False))

#: A span of more than this many decades (positive values only) switches an axis to log scale.
LOG_SCALE_DECADES = 1.5
DPI = 150
PathArg = str | os.PathLike[str]

_LEARNER_CMAPS = ("Blues", "Oranges", "Greens", "Purples", "Reds", "PuRd", "YlGn", "Greys")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
_NULL_COLOR = "0.45"
_ONE_SEED = ":"  # line style of an error bar that is a single run's own interval
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
    "hatch.linewidth": 0.6,
}
_PNG_METADATA: dict[str, str | None] = {"Software": None}
_PDF_METADATA: dict[str, str | None] = {"Creator": None, "Producer": None, "CreationDate": None}


def use_log_scale(values: Iterable[float], decades: float = LOG_SCALE_DECADES) -> bool:
    """True when every finite value is positive and ``max / min`` exceeds ``10 ** decades``."""
    arr = np.asarray(list(values), dtype=float).ravel()
    arr = arr[np.isfinite(arr)]
    if arr.size == 0 or bool(np.any(arr <= 0)):
        return False
    return bool(np.log10(arr.max() / arr.min()) > decades)


# ------------------------------------------------------------------------------------------ groups, style


@dataclass(frozen=True)
class Group:
    """One group of runs (they differ only by seed) and its style in every figure."""

    key: str  # label, e.g. "protonet · conv4 w64 · wd 5e-4"
    learner: str
    backbone: str
    width: float  # NaN for backbones without a width
    family: str  # the label without the width: groups of one family differ only by width
    color: str
    marker: str


def _ordered_unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _ordered(values: Iterable[str], preferred: Sequence[str]) -> list[str]:
    seen = _ordered_unique(values)
    return [v for v in preferred if v in seen] + [v for v in seen if v not in preferred]


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _value_text(text: str) -> str:
    """A runs-table value for a label: numbers compact (``5e-4``, ``0.01``, ``64``), text as it is."""
    value = _number(text)
    if value is None or not np.isfinite(value):
        return text
    if value == int(value) and abs(value) < 1e6:
        return str(int(value))
    if abs(value) < 1e-3 or abs(value) >= 1e6:
        return np.format_float_scientific(value, trim="-", exp_digits=1)
    return f"{value:g}"


def _key_names(keys: Sequence[str]) -> dict[str, str]:
    """Short names of spec keys in a label: :data:`KEY_SHORT`, else the last part when that is unambiguous."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: KEY_SHORT.get(k, part if last.count(part) == 1 else k) for k, part in zip(keys, last, strict=True)}


def _run_groups(tables: Sequence[pd.DataFrame], runs: pd.DataFrame | None, runs_path: str) -> pd.DataFrame:
    """Per run (in order of first appearance): ``group`` (label), ``family`` and the sort key ``order``."""
    ident = pd.concat([t[list(RUN_COLUMNS)] for t in tables if not t.empty], ignore_index=True)
    ident = ident.drop_duplicates("run").set_index("run")
    extras: list[str] = []
    if runs is not None:
        unknown = [r for r in ident.index if r not in set(runs["run"])]
        if unknown:
            raise ValueError(f"{runs_path}: runs table has no row for run(s) {unknown} of the result tables")
        runs = runs.set_index("run").loc[ident.index]
        extras = [k for k in varying_keys(runs.reset_index()) if k not in RUN_COLUMN_KEYS]
    names = _key_names(extras)
    learners = _ordered_unique(ident["learner"])
    backbones = _ordered_unique(ident["backbone"])
    out = []
    for run, row in ident.iterrows():
        width = float(row["width"])
        base = f"{row['learner']} · {row['backbone']}"
        values = [(k, str(runs.at[run, k])) for k in extras] if runs is not None else []
        tail = "".join(f" · {names[k]} {_value_text(v)}" for k, v in values if v != "")
        order = (
            learners.index(row["learner"]),
            backbones.index(row["backbone"]),
            np.isfinite(width),
            width if np.isfinite(width) else 0.0,
            *((0, n, "") if (n := _number(v)) is not None else (1, 0.0, v) for _, v in values),
        )
        group = base + ("" if not np.isfinite(width) else f" w{width:g}") + tail
        out.append({"run": run, "group": group, "family": base + tail, "order": order})
    return pd.DataFrame(out).set_index("run")


def _group_styles(run_groups: pd.DataFrame, ident: pd.DataFrame) -> dict[str, Group]:
    """The groups in order (learner, backbone, width, then the varying keys), each with colour and marker.

    Each learner gets a colour family, shaded light to dark over its groups; each backbone a marker.
    """
    rows = run_groups.join(ident).drop_duplicates("group")
    rows = rows.iloc[sorted(range(len(rows)), key=lambda i: rows["order"].iloc[i])]
    learners = _ordered_unique(ident["learner"])
    backbones = _ordered_unique(ident["backbone"])
    styles: dict[str, Group] = {}
    for li, learner in enumerate(learners):
        mine = rows[rows["learner"] == learner]
        cmap = colormaps[_LEARNER_CMAPS[li % len(_LEARNER_CMAPS)]]
        shades = [0.75] if len(mine) == 1 else np.linspace(0.45, 0.95, len(mine)).tolist()
        for r, shade in zip(mine.itertuples(), shades, strict=True):
            styles[r.group] = Group(
                key=r.group,
                learner=r.learner,
                backbone=r.backbone,
                width=float(r.width),
                family=r.family,
                color=to_hex(cmap(shade)),
                marker=_MARKERS[backbones.index(r.backbone) % len(_MARKERS)],
            )
    return {g: styles[g] for g in rows["group"]}


def _seeds_label(group: Group, n: int) -> str:
    return f"{group.key} ({n} seed{'' if n == 1 else 's'})"


def _group_handle(group: Group, label: str, line: bool = True) -> Line2D:
    return Line2D(
        [], [], color=group.color, marker=group.marker, linewidth=1.8 if line else 0.0, markersize=5, label=label
    )


# -------------------------------------------------------------------------------------- values, intervals


def _over_seeds(rows: pd.DataFrame, by: Sequence[str], relative: bool = False) -> pd.DataFrame:
    """Per combination of ``by``: the mean over seeds of the runs' ``mean`` (over ``null`` if ``relative``).

    Columns ``*by, mean, lo, hi, n, interval``: the 95% t-interval over seeds (``seeds``) for two seeds or more;
    for one seed the run's own ``ci_low``..``ci_high`` (``bootstrap``) where finite, else none (``""``).
    """
    by = list(by)
    scale = rows["null"].where(rows["null"] > 0) if relative else 1.0
    df = rows[by].assign(value=rows["mean"] / scale, blo=rows["ci_low"] / scale, bhi=rows["ci_high"] / scale)
    agg = aggregate_seeds(df, by, "value")
    own = df[np.isfinite(df["value"])].groupby(by, sort=True, dropna=False)[["blo", "bhi"]].first().reset_index()
    agg = agg.merge(own, on=by, how="left")
    seeds = (agg["n"] >= 2).to_numpy()
    boot = ((agg["n"] == 1) & np.isfinite(agg["blo"]) & np.isfinite(agg["bhi"])).to_numpy()
    mean, half = agg["mean"].to_numpy(float), agg["ci95"].to_numpy(float)
    agg["lo"] = np.where(seeds, mean - half, np.where(boot, agg["blo"], np.nan))
    agg["hi"] = np.where(seeds, mean + half, np.where(boot, agg["bhi"], np.nan))
    agg["interval"] = np.where(seeds, "seeds", np.where(boot, "bootstrap", ""))
    return agg[[*by, "mean", "lo", "hi", "n", "interval"]]


def _has_null(rows: pd.DataFrame) -> bool:
    """Whether every finite value of ``rows`` has a positive null, so that they can be drawn over it."""
    finite = rows[np.isfinite(rows["mean"])]
    return not finite.empty and bool((finite["null"] > 0).all())


def _final_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of each run's last epoch among ``df``."""
    if df.empty:
        return df
    return df[df["epoch"] == df.groupby("run")["epoch"].transform("max")]


def _class_probes(nc: pd.DataFrame) -> list[str]:
    """Probes of whole classes (set ``all``), in :data:`PROBE_ORDER`."""
    return _ordered(nc.loc[nc["set"] == "all", "probe"], PROBE_ORDER)


def _fewshot_by_group(shots: pd.DataFrame) -> pd.DataFrame:
    """Accuracy (%) per group, split and task: mean over seeds with its t-interval (``interval`` ``seeds``), or
    for one seed the run's interval over its test episodes (``episodes``); intervals clipped to [0, 100]."""
    by = ["group", "split", "n_way", "n_shot"]
    agg = aggregate_seeds(shots, by, "accuracy")
    own = shots.groupby(by, sort=True)["ci95"].first().rename("episode_ci").reset_index()
    agg = agg.merge(own, on=by, how="left")
    one = agg["n"] == 1
    half = 100.0 * np.where(one, agg["episode_ci"], agg["ci95"])
    agg["mean"] *= 100.0
    agg["lo"] = np.clip(agg["mean"] - half, 0.0, 100.0)
    agg["hi"] = np.clip(agg["mean"] + half, 0.0, 100.0)
    agg["interval"] = np.where(np.isfinite(half), np.where(one, "episodes", "seeds"), "")
    return agg[[*by, "mean", "lo", "hi", "n", "interval"]]


def _tasks(fs: pd.DataFrame) -> list[tuple[str, int, int]]:
    """(split, n_way, n_shot) of the few-shot rows, splits in :data:`SPLIT_ORDER`, tasks sorted."""
    splits = _ordered(fs["split"], SPLIT_ORDER)
    tasks = {(str(s), int(w), int(k)) for s, w, k in zip(fs["split"], fs["n_way"], fs["n_shot"], strict=True)}
    return sorted(tasks, key=lambda t: (splits.index(t[0]), t[1], t[2]))


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


def _short(metric: str) -> str:
    return METRIC_INFO[metric].short if metric in METRIC_INFO else metric


def _metric_label(metric: str, relative: bool = False, log: bool = False) -> str:
    """Axis label: the formula (or ``metric / null``) and how the axis is scaled."""
    axis = "log axis" if log else "axis from 0"
    if relative:
        return f"{_short(metric)} / null\n({axis}; 1 = Gaussian null)"
    info = METRIC_INFO.get(metric)
    text = f"{info.formula}\n{info.direction}" if info else metric
    return f"{text}\n({axis})"


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
    # About 0.075 inch per character of an 8-point label, plus the handle: as many columns as the figure holds.
    widest = max(0.075 * len(h.get_label()) + 0.7 for b in blocks for h in b)
    fits = max(int(fig.get_figwidth() / widest), 1)
    ncols = min(max(len(b) for b in blocks), max_cols, fits)
    rows: list[list[Line2D | Patch]] = []
    for block in blocks:
        for start in range(0, len(block), ncols):
            row = block[start : start + ncols]
            rows.append(row + [Line2D([], [], alpha=0.0, label=" ") for _ in range(ncols - len(row))])
    handles = [rows[r][c] for c in range(ncols) for r in range(len(rows))]
    fig.legend(handles=handles, loc="outside lower center", ncols=ncols, frameon=False)


def _interval_handles(kinds: set[str], bars: bool) -> list[Line2D | Patch]:
    """Legend entries for the kinds of interval drawn (bands, or error bars when ``bars``)."""
    text = {
        "seeds": "95% interval over seeds (Student t)",
        "bootstrap": "95% bootstrap interval over the probe (one seed)",
        "episodes": "95% interval over test episodes (one seed)",
    }
    out: list[Line2D | Patch] = []
    for kind in ("seeds", "bootstrap", "episodes"):
        if kind not in kinds:
            continue
        if bars:
            style = "-" if kind == "seeds" else _ONE_SEED
            out.append(Line2D([], [], color="0.3", linestyle=style, marker="|", label=f"error bar: {text[kind]}"))
        elif kind == "seeds":
            out.append(Patch(color="0.5", alpha=0.3, label=f"band: {text[kind]}"))
        else:
            out.append(Patch(facecolor="none", edgecolor="0.4", hatch="////", label=f"band: {text[kind]}"))
    return out


def _null_handles(shared: bool, per_group: bool, ratio: bool = False) -> list[Line2D]:
    out = []
    if ratio:
        out.append(
            Line2D([], [], color=_NULL_COLOR, linestyle="--", label="null (ratio 1): isotropic Gaussian features")
        )
    if shared:
        out.append(Line2D([], [], color=_NULL_COLOR, linestyle="--", label="null: isotropic Gaussian features"))
    if per_group:
        out.append(Line2D([], [], color="0.2", linestyle="--", linewidth=0.9, label="null of each group (its colour)"))
    return out


def _band(ax: Axes, x: np.ndarray, s: pd.DataFrame, color: str, log: bool, clip: tuple[float, float]) -> set[str]:
    """Shade each point's interval (``lo``..``hi`` of :func:`_over_seeds` rows ``s``); returns the kinds drawn."""
    drawn = set()
    for kind in ("seeds", "bootstrap"):
        ok = (s["interval"] == kind).to_numpy() & np.isfinite(s["lo"].to_numpy(float))
        if not ok.any():
            continue
        y, lo, hi = (s[c].to_numpy(float)[ok] for c in ("mean", "lo", "hi"))
        lo = np.maximum(lo, y / 10) if log else lo
        lo, hi = np.clip(lo, *clip), np.clip(hi, *clip)
        if kind == "seeds":
            ax.fill_between(x[ok], lo, hi, color=color, alpha=0.18, linewidth=0)
        else:
            ax.fill_between(x[ok], lo, hi, facecolor="none", edgecolor=color, hatch="////", linewidth=0, alpha=0.6)
        drawn.add(kind)
    return drawn


def _err(s: pd.Series, log: bool) -> np.ndarray | None:
    """Asymmetric error ``[[below], [above]]`` of one point (``mean, lo, hi``); none without an interval.

    On a log axis the bar stops at a tenth of the mean."""
    mean, lo, hi = float(s["mean"]), float(s["lo"]), float(s["hi"])
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return None
    if log:
        lo = max(lo, mean / 10)
    return np.array([[max(mean - lo, 0.0)], [max(hi - mean, 0.0)]])


def _point(ax: Axes, x: float, y: float, group: Group, xs=None, ys=None, xlog=False, ylog=False) -> set[str]:
    """One group's point with error bars from the interval rows ``xs`` / ``ys`` (dotted: a single run's own
    interval); returns the kinds of interval drawn."""
    errs = [
        (e, s)
        for e, s in ((_err(xs, xlog) if xs is not None else None, xs), (_err(ys, ylog) if ys is not None else None, ys))
    ]
    bars = ax.errorbar(
        [x],
        [y],
        xerr=errs[0][0],
        yerr=errs[1][0],
        fmt=group.marker,
        color=group.color,
        markersize=5,
        capsize=2.5,
        elinewidth=1.0,
    )
    drawn = [s for e, s in errs if e is not None]
    for collection, s in zip(bars[2], drawn, strict=True):
        if s["interval"] != "seeds":
            collection.set_linestyle(_ONE_SEED)
    return {str(s["interval"]) for s in drawn}


def _extent(df: pd.DataFrame, log: bool) -> list[float]:
    """Every value drawn for rows ``mean, lo, hi``: means, interval ends (a log axis stops at a tenth of the mean)."""
    mean, lo = df["mean"].to_numpy(float), df["lo"].to_numpy(float)
    lo = np.fmax(lo, mean / 10) if log else lo
    return [*mean, *lo, *df["hi"].to_numpy(float)]


def _null_lines(ax: Axes, nulls: pd.Series, groups: dict[str, Group]) -> tuple[bool, bool]:
    """Dashed null lines: one grey line when every group shares its value, else one per group in its colour."""
    nulls = nulls[np.isfinite(nulls)]
    if nulls.empty:
        return False, False
    if len({f"{v:.4g}" for v in nulls}) == 1:
        ax.axhline(float(nulls.iloc[0]), color=_NULL_COLOR, linestyle="--", linewidth=1.1)
        return True, False
    for key, value in nulls.items():
        ax.axhline(float(value), color=groups[key].color, linestyle="--", linewidth=0.9, alpha=0.85)
    return False, True


def _limits(ax: Axes, values: Iterable[float], log: bool, include: float | None = None, axis: str = "y") -> None:
    """Limits that invent no difference: a linear axis of non-negative values starts at 0, a log axis includes
    ``include`` (the null); both hold every value drawn."""
    arr = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
    if include is not None:
        arr = np.append(arr, include)
    if arr.size == 0:
        return
    set_scale, set_lim = (ax.set_yscale, ax.set_ylim) if axis == "y" else (ax.set_xscale, ax.set_xlim)
    if log:
        arr = arr[arr > 0]
        set_scale("log")
        low, high = arr.min() / 1.25, arr.max() * 1.25
        set_lim(low, high)
        # Plain numbers (0.3, 20), not 3 x 10^-1; minor ticks labelled as far as the span leaves room for them.
        span = np.log10(high / low)
        shown = range(2, 10) if span < 1 else (2, 5) if span < 2 else ()
        which = ax.yaxis if axis == "y" else ax.xaxis
        which.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
        which.set_minor_formatter(
            FuncFormatter(lambda v, _: f"{v:.3g}" if round(v / 10 ** np.floor(np.log10(v))) in shown else "")
        )
    elif arr.min() >= 0:
        set_lim(0.0, arr.max() * 1.08 if arr.max() > 0 else 1.0)


# ------------------------------------------------------------------------------------------------ figures


def _panel_keys(rows: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(probe, set, bn_mode) of the rows, in probe order, then set order, then BN mode."""
    keys = rows[["probe", "set", "bn_mode"]].drop_duplicates()
    probes = _ordered(keys["probe"], PROBE_ORDER)
    sets = _ordered(keys["set"], SET_ORDER)
    triples = [(str(p), str(s), str(b)) for p, s, b in keys.itertuples(index=False)]
    return sorted(triples, key=lambda t: (probes.index(t[0]), sets.index(t[1]), t[2]))


def _grid(n: int) -> tuple[int, int]:
    ncols = 1 if n == 1 else 2
    return (n + ncols - 1) // ncols, ncols


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
    kinds: set[str] = set()
    shared_null = group_null = False
    for k, (ax, (probe, set_name, bn_mode)) in enumerate(zip(axes, panels, strict=False)):
        ax.set_title(f"{probe} · {set_name} · BN {bn_mode}")
        pdata = data[(data["probe"] == probe) & (data["set"] == set_name) & (data["bn_mode"] == bn_mode)]
        agg = _over_seeds(pdata, ["group", "epoch"])
        nulls = aggregate_seeds(pdata, ["group"], "null").set_index("group")["mean"]
        log = use_log_scale([*agg["mean"], *nulls])
        floor = -np.inf if (np.asarray([*agg["mean"], *nulls]) < 0).any() else 0.0  # bands of NC values stop at 0
        drawn = False
        for key, group in groups.items():
            s = agg[(agg["group"] == key) & np.isfinite(agg["mean"])]
            if s.empty:
                continue
            drawn = True
            seeds[key] = max(seeds.get(key, 0), int(s["n"].max()))
            x = s["epoch"].to_numpy(dtype=float)
            y = s["mean"].to_numpy(dtype=float)
            ax.plot(x, y, color=group.color, marker=group.marker if len(x) <= 12 else None, lw=1.5, ms=3.5)
            kinds |= _band(ax, x, s, group.color, log, (floor, np.inf))
        one, each = _null_lines(ax, nulls, groups)
        shared_null |= one
        group_null |= each
        if not drawn and not (one or each):
            _no_data(ax, f"no finite {metric} values")
            continue
        _limits(ax, [*_extent(agg, log), *nulls], log)
        ax.set_xlabel("epoch (0 = untrained)")
        ax.set_ylabel(_metric_label(metric, log=log) if k % ncols == 0 else _short(metric))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes[len(panels) :] if panels else axes[1:]:
        ax.set_visible(False)
    group_handles = [_group_handle(g, _seeds_label(g, seeds[k])) for k, g in groups.items() if k in seeds]
    style = [Line2D([], [], color="0.2", linewidth=1.5, label="line: mean over a group's seeds")] if seeds else []
    style += _interval_handles(kinds, bars=False) + _null_handles(shared_null, group_null)
    _block_legend(fig, [group_handles, style])
    return fig


def _training_figure(logs: pd.DataFrame, groups: dict[str, Group], val_way: pd.Series) -> Figure:
    """Loss and accuracy curves; ``val_way`` (per group, may be empty) places chance level on validation."""
    fig = Figure(figsize=(10.5, 7.0), layout="constrained")
    axes = fig.subplots(2, 2, sharex=True, squeeze=False)
    fig.suptitle("Training curves (episodic loss and accuracy; mean over seeds)", fontsize=11)
    panels = [
        (axes[0, 0], "train_loss", "training loss", "loss (cross-entropy; axis from 0)", 1.0),
        (axes[0, 1], "val_loss", "validation loss", "loss (cross-entropy; axis from 0)", 1.0),
        (axes[1, 0], "train_acc", "training accuracy", "accuracy (%; axis 0-100)", 100.0),
        (axes[1, 1], "val_acc", "validation accuracy", "accuracy (%; axis 0-100)", 100.0),
    ]
    seeds: dict[str, int] = {}
    kinds: set[str] = set()
    shared_null = group_null = False
    for ax, col, title, ylabel, scale in panels:
        ax.set_title(title)
        rows = logs.assign(mean=logs[col] * scale, null=np.nan, ci_low=np.nan, ci_high=np.nan)
        agg = _over_seeds(rows, ["group", "epoch"])
        any_line = False
        for key, group in groups.items():
            s = agg[(agg["group"] == key) & np.isfinite(agg["mean"])]
            if s.empty:
                continue
            any_line = True
            seeds[key] = max(seeds.get(key, 0), int(s["n"].max()))
            x = s["epoch"].to_numpy(dtype=float)
            ax.plot(x, s["mean"], color=group.color, marker=group.marker if len(x) <= 12 else None, lw=1.5, ms=3.5)
            kinds |= _band(ax, x, s, group.color, False, (0.0, 100.0 if scale == 100.0 else np.inf))
        if col.startswith("val") and not val_way.empty:
            chance = np.log(val_way) if col == "val_loss" else 100.0 / val_way
            one, each = _null_lines(ax, chance.astype(float), groups)
            shared_null |= one
            group_null |= each
        if not any_line:
            _no_data(ax)
            continue
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelbottom=True)
        ax.set_xlabel("epoch")
    for row in range(2):  # one y-range per row so that training and validation compare directly
        lims = [a.get_ylim() for a in axes[row] if a.has_data()]
        top = 100.0 if row == 1 else max([lim[1] for lim in lims], default=1.0)
        for a in axes[row]:
            if a.has_data():
                a.set_ylim(0.0, top)
    style = _interval_handles(kinds, bars=False)
    if shared_null or group_null:
        style.append(
            Line2D([], [], color=_NULL_COLOR, linestyle="--", label="chance on validation episodes: 1/N, ln N")
        )
    _block_legend(fig, [[_group_handle(g, _seeds_label(g, seeds[k])) for k, g in groups.items() if k in seeds], style])
    return fig


def _episodic_blocks(nc: pd.DataFrame) -> list[tuple[str, str]]:
    """(probe, bn_mode) of the per-episode rows (sets support and query), in probe order."""
    rows = nc[nc["set"].isin(["support", "query"])]
    probes = _ordered(rows["probe"], PROBE_ORDER)
    pairs = {(str(p), str(b)) for p, b in zip(rows["probe"], rows["bn_mode"], strict=True)}
    return sorted(pairs, key=lambda pb: (probes.index(pb[0]), pb[1]))


def _episodic_summary(
    axes: Sequence[Axes], slots: list, nc: pd.DataFrame, groups: dict[str, Group]
) -> tuple[set, dict]:
    """Per (probe, BN mode, metric) one panel: the final-epoch metric over its null on support and query."""
    kinds: set[str] = set()
    seeds: dict[str, int] = {}
    for ax, (probe, bn_mode, metric) in zip(axes, slots, strict=True):
        rows = _final_rows(nc[(nc["probe"] == probe) & (nc["bn_mode"] == bn_mode) & (nc["metric"] == metric)])
        rows = rows[rows["set"].isin(["support", "query"])]
        relative = _has_null(rows)
        ax.set_title(f"{probe} · BN {bn_mode}\n{_short(metric)}{' / null' if relative else ''}")
        agg = _over_seeds(rows, ["group", "set"], relative)
        present = [g for g in groups.values() if (agg["group"] == g.key).any()]
        width = 0.8 / max(len(present), 1)
        sets = [s for s in ("support", "query") if (agg["set"] == s).any()]
        log = relative or use_log_scale(agg["mean"])
        for i, group in enumerate(present):
            grows = rows[rows["group"] == group.key]
            seeds[group.key] = max(seeds.get(group.key, 0), int(grows["run"].nunique()))
            for j, set_name in enumerate(sets):
                s = agg[(agg["group"] == group.key) & (agg["set"] == set_name)]
                if s.empty or not np.isfinite(s["mean"].iloc[0]):
                    continue
                kinds |= _point(ax, j - 0.4 + width * (i + 0.5), s["mean"].iloc[0], group, ys=s.iloc[0], ylog=log)
        if relative:
            ax.axhline(1.0, color=_NULL_COLOR, linestyle="--", linewidth=1.1)
        _limits(ax, _extent(agg, log), log, include=1.0 if relative else None)
        ax.set_xticks(range(len(sets)), [f"{s} images" for s in sets])
        ax.set_xlim(-0.6, len(sets) - 0.4)
        ax.grid(axis="x", visible=False)
        ax.set_ylabel(_metric_label(metric, relative, log))
    return kinds - {""}, seeds


def _fewshot_panel(ax: Axes, shots: pd.DataFrame, groups: dict[str, Group]) -> tuple[set, dict]:
    ax.set_title("Few-shot accuracy on the evaluation splits (mean over seeds; dashed: chance 1/N)")
    if shots.empty:
        _no_data(ax, "no few-shot accuracy rows")
        return set(), {}
    fs = _fewshot_by_group(shots)
    tasks = _tasks(fs)
    present = [g for g in groups.values() if (fs["group"] == g.key).any()]
    width = 0.8 / max(len(present), 1)
    kinds: set[str] = set()
    seeds: dict[str, int] = {}
    for i, group in enumerate(present):
        rows = fs[fs["group"] == group.key].set_index(["split", "n_way", "n_shot"])
        seeds[group.key] = int(rows["n"].max())
        for j, task in enumerate(tasks):
            if task not in rows.index or not np.isfinite(rows.at[task, "mean"]):
                continue
            x = j - 0.4 + width * (i + 0.5)
            kinds |= _point(ax, x, rows.at[task, "mean"], group, ys=rows.loc[task])
            ax.annotate(
                f"{rows.at[task, 'mean']:.1f}",
                (x, rows.at[task, "hi"] if np.isfinite(rows.at[task, "hi"]) else rows.at[task, "mean"]),
                xytext=(0, 3),
                textcoords="offset points",
                ha="center",
                va="bottom",
                rotation=90,
                fontsize=6,
                color="0.25",
            )
    for j, (_, way, _) in enumerate(tasks):
        ax.hlines(100.0 / way, j - 0.45, j + 0.45, color=_NULL_COLOR, linestyle="--", linewidth=1.1)
    ax.set_ylim(0.0, 112.0)
    ax.set_yticks(range(0, 101, 20))
    ax.set_xticks(range(len(tasks)), [f"{w}-way {k}-shot\n{s}" for s, w, k in tasks])
    ax.set_xlim(-0.6, len(tasks) - 0.4)
    ax.grid(axis="x", visible=False)
    ax.set_ylabel("accuracy (%; axis 0-100)")
    ax.set_xlabel("task (classes per episode, labelled images per class) and split")
    return kinds - {""}, seeds


def _summary_figure(nc: pd.DataFrame, shots: pd.DataFrame, groups: dict[str, Group]) -> Figure:
    nc1 = "nc1_paper" if (nc["metric"] == "nc1_paper").any() else "nc1"
    metrics = (nc1, *SUMMARY_METRICS[1:])
    slots = [(p, b, m) for p, b in _episodic_blocks(nc[nc["metric"].isin(metrics)]) for m in metrics]
    ncols = max(len(slots), 1)
    fig = Figure(figsize=(max(13.0, 2.6 * ncols), 9.5), layout="constrained")
    grid = fig.add_gridspec(2, ncols, height_ratios=[1.0, 1.0])
    top = [fig.add_subplot(grid[0, j]) for j in range(ncols)]
    bottom = fig.add_subplot(grid[1, :])
    fig.suptitle("Final epoch: the paper's per-episode NC1 and NC2 over their null, and few-shot accuracy", fontsize=11)
    if not slots:
        _no_data(top[0], "no per-episode rows (sets support / query) in the NC table")
    kinds, seeds = _episodic_summary(top[: len(slots)], slots, nc, groups)
    few_kinds, few_seeds = _fewshot_panel(bottom, shots, groups)
    handles = [
        _group_handle(g, _seeds_label(g, max(seeds.get(k, 0), few_seeds.get(k, 0))), line=False)
        for k, g in groups.items()
        if k in seeds or k in few_seeds
    ]
    style = _interval_handles(kinds | few_kinds, bars=True)
    style += _null_handles(False, False, ratio=bool(slots))
    if few_seeds:
        style.append(Line2D([], [], color=_NULL_COLOR, linestyle="--", label="chance accuracy 1/N"))
    _block_legend(fig, [handles, style])
    return fig


def _model_size_points(nc: pd.DataFrame, logs: pd.DataFrame) -> pd.DataFrame:
    """Final-epoch collapse per (metric, class probe, group), over the null where it has one, with the size.

    Columns ``metric, relative, probe, group, family, mean, lo, hi, n, interval, n_params, dims``.
    """
    size = logs.sort_values(["run", "epoch"], kind="stable").groupby("run")[["n_params", "dim"]].last()
    rows = nc[(nc["set"] == "all") & nc["metric"].isin(MODEL_SIZE_METRICS)].join(size, on="run")
    out = []
    for (metric, probe), mrows in rows.groupby(["metric", "probe"], sort=False):
        final = _final_rows(mrows)
        relative = _has_null(final)
        agg = _over_seeds(final, ["group"], relative)
        per_group = final.groupby("group")
        agg = agg.assign(
            metric=metric,
            relative=relative,
            probe=probe,
            family=agg["group"].map(per_group["family"].first()),
            n_params=agg["group"].map(per_group["n_params"].mean()).astype(float),
            dims=agg["group"].map(per_group["dim"].agg(lambda d: sorted({int(v) for v in d if np.isfinite(v)}))),
        )
        out.append(agg[np.isfinite(agg["mean"]) & np.isfinite(agg["n_params"]) & (agg["n_params"] > 0)])
    columns = ["metric", "relative", "probe", "group", "family", "mean", "lo", "hi", "n", "interval", "n_params"]
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame(columns=[*columns, "dims"])


def _model_size_figure(nc: pd.DataFrame, logs: pd.DataFrame, groups: dict[str, Group]) -> Figure:
    points = _model_size_points(nc, logs)
    metrics = [m for m in MODEL_SIZE_METRICS if (points["metric"] == m).any()] or [MODEL_SIZE_METRICS[0]]
    probes = _class_probes(nc) or ["(no class probe)"]
    fig = Figure(figsize=(3.6 * len(probes) + 3.3, 2.7 * len(metrics) + 1.8), layout="constrained")
    axes = fig.subplots(len(metrics), len(probes), squeeze=False)
    fig.suptitle(
        "Collapse at the final epoch against model size (mean over seeds; label: embedding dimension d)", fontsize=11
    )
    families: dict[str, tuple[Group, set[int]]] = {}
    kinds: set[str] = set()
    ratio = False
    for r, metric in enumerate(metrics):
        for c, probe in enumerate(probes):
            ax = axes[r, c]
            pts = points[(points["metric"] == metric) & (points["probe"] == probe)]
            bn = _ordered_unique(nc.loc[(nc["probe"] == probe) & (nc["set"] == "all"), "bn_mode"])
            relative = bool(pts["relative"].any())
            ax.set_title(f"{_short(metric)}{' / null' if relative else ''}: {probe} · all · BN {', '.join(bn) or '?'}")
            if pts.empty:
                _no_data(ax, f"no {metric} with a parameter count")
                continue
            log = relative or use_log_scale(pts["mean"])
            for family in _ordered_unique(groups[k].family for k in groups if k in set(pts["group"])):
                fam = pts[pts["family"] == family].sort_values("n_params")
                last = groups[fam["group"].iloc[-1]]
                ax.plot(fam["n_params"], fam["mean"], color=last.color, linewidth=1.2, alpha=0.8)
                known = families.setdefault(family, (last, set()))
                for row in fam.itertuples(index=False):
                    group = groups[row.group]
                    known[1].update(row.dims or [])
                    kinds |= _point(ax, row.n_params, row.mean, group, ys=pd.Series(row._asdict()), ylog=log)
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
                ratio = True
            _limits(ax, _extent(pts, log), log, include=1.0 if relative else None)
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels of a narrow range overlap
            ax.set_xlabel("parameters of the backbone (log axis)")
            if c == 0:
                ax.set_ylabel(_metric_label(metric, relative, log))
    handles = []
    for family, (group, dims) in families.items():
        d = ", ".join(str(v) for v in sorted(dims))
        handles.append(_group_handle(group, f"{family} (d = {d})" if d else family))
    _block_legend(fig, [handles, _interval_handles(kinds - {""}, bars=True) + _null_handles(False, False, ratio)])
    return fig


def _learner_rows(fs: pd.DataFrame) -> list[tuple[str, int, int]]:
    """Per split the preferred tasks (:data:`LEARNER_TASKS`) present, else its first two."""
    out = []
    for split in _ordered(fs["split"], SPLIT_ORDER):
        tasks = [t for t in _tasks(fs) if t[0] == split]
        preferred = [t for t in tasks if t[1:] in LEARNER_TASKS]
        out += preferred or tasks[: len(LEARNER_TASKS)]
    return out


def _learners_figure(nc: pd.DataFrame, shots: pd.DataFrame, groups: dict[str, Group]) -> Figure:
    fs = _fewshot_by_group(shots) if not shots.empty else pd.DataFrame(columns=["group", "split", "n_way", "n_shot"])
    tasks = _learner_rows(fs)
    nrows = max(len(tasks), 1)
    fig = Figure(figsize=(10.5, 3.6 * nrows + 1.8), layout="constrained")
    axes = fig.subplots(nrows, len(LEARNER_METRICS), squeeze=False)
    fig.suptitle(
        "Few-shot accuracy against collapse of the evaluated classes (final epoch; mean over seeds)", fontsize=11
    )
    seeds: dict[str, int] = {}
    kinds: set[str] = set()
    for c, metric in enumerate(LEARNER_METRICS):
        for r in range(nrows):
            ax = axes[r, c]
            if not tasks:
                ax.set_title(f"against {metric}")
                _no_data(ax, "no few-shot rows")
                continue
            split, way, shot = tasks[r]
            probe = f"{split}_classes"
            rows = _final_rows(nc[(nc["probe"] == probe) & (nc["set"] == "all") & (nc["metric"] == metric)])
            relative = _has_null(rows)
            bn = ", ".join(_ordered_unique(rows["bn_mode"])) or "?"
            ax.set_title(f"{split}: {way}-way {shot}-shot\nagainst {_short(metric)} on {probe} · all · BN {bn}")
            xs = _over_seeds(rows, ["group"], relative).set_index("group")
            ys = fs[(fs["split"] == split) & (fs["n_way"] == way) & (fs["n_shot"] == shot)].set_index("group")
            keys = [k for k in groups if k in xs.index and k in ys.index]
            keys = [k for k in keys if np.isfinite(xs.at[k, "mean"]) and np.isfinite(ys.at[k, "mean"])]
            if not keys:
                _no_data(ax, f"no group has both the accuracy and {metric} on {probe}")
                continue
            log = relative or use_log_scale(xs.loc[keys, "mean"])
            for k in keys:
                group = groups[k]
                seeds[k] = max(seeds.get(k, 0), int(xs.at[k, "n"]), int(ys.at[k, "n"]))
                kinds |= _point(ax, xs.at[k, "mean"], ys.at[k, "mean"], group, xs=xs.loc[k], ys=ys.loc[k], xlog=log)
            ax.axhline(100.0 / way, color=_NULL_COLOR, linestyle="--", linewidth=1.0)
            if relative:
                ax.axvline(1.0, color=_NULL_COLOR, linestyle="--", linewidth=1.0)
            _limits(ax, _extent(xs.loc[keys], log), log, include=1.0 if relative else None, axis="x")
            ax.set_ylim(0.0, 102.0)
            ax.set_xlabel(_metric_label(metric, relative, log).replace("\n", " "))
            ax.set_ylabel("accuracy (%; axis 0-100)")
    handles = [_group_handle(g, _seeds_label(g, seeds[k]), line=False) for k, g in groups.items() if k in seeds]
    style = _interval_handles(kinds - {""}, bars=True)
    style.append(Line2D([], [], color=_NULL_COLOR, linestyle="--", label="chance 1/N; null (ratio 1)"))
    _block_legend(fig, [handles, style])
    return fig


def _depth_slot(layer: str) -> tuple:
    """Position of a layer by depth: numbered blocks (``block2``, ``layer2``) by number, then others, then the
    embedding."""
    if layer == EMBEDDING:
        return (2,)
    match = re.fullmatch(r"\D*(\d+)", layer)
    return (0, int(match.group(1))) if match else (1, layer)


def _epoch_roles(epochs: Iterable[int]) -> dict[str, int]:
    """The first epoch, an early one (nearest a tenth of the way), and the last."""
    epochs = sorted(set(int(e) for e in epochs))
    first, last = epochs[0], epochs[-1]
    roles = {"first": first}
    between = [e for e in epochs if first < e < last]
    if between:
        target = first + (last - first) / 10
        roles["early"] = min(between, key=lambda e: (abs(e - target), e))
    if last != first:
        roles["last"] = last
    return roles


_ROLE_STYLE = {"first": ":", "early": "-.", "last": "-"}


def _layers_figure(nc: pd.DataFrame, groups: dict[str, Group]) -> Figure:
    rows = nc[nc["set"] == "all"]
    layered = rows[rows["layer"] != EMBEDDING]
    metrics = [(m, rel) for m, rel in LAYER_METRICS if (layered["metric"] == m).any()]
    probes = _class_probes(layered)
    if not metrics or not probes:
        fig = Figure(figsize=(6.5, 3.0), layout="constrained")
        fig.suptitle("Collapse against depth", fontsize=11)
        _no_data(fig.subplots(), "no layer-wise rows in the NC table (only the embedding)")
        return fig
    runs_with_layers = set(layered["run"])
    rows = rows[rows["run"].isin(runs_with_layers) & rows["metric"].isin([m for m, _ in metrics])]
    slots = sorted({_depth_slot(str(v)) for v in rows["layer"]})
    names = {s: "/".join(_ordered_unique(str(v) for v in rows["layer"] if _depth_slot(str(v)) == s)) for s in slots}
    rows = rows.assign(x=rows["layer"].map(lambda v: slots.index(_depth_slot(str(v)))))
    fig = Figure(figsize=(3.6 * len(probes) + 3.3, 2.8 * len(metrics) + 2.0), layout="constrained")
    axes = fig.subplots(len(metrics), len(probes), squeeze=False)
    fig.suptitle("Collapse against depth, at the first, an early and the last epoch (mean over seeds)", fontsize=11)
    seeds: dict[str, int] = {}
    kinds: set[str] = set()
    used_roles: dict[str, set[int]] = {}
    shared_null = group_null = ratio = False
    for r, (metric, want_relative) in enumerate(metrics):
        for c, probe in enumerate(probes):
            ax = axes[r, c]
            prow = rows[(rows["probe"] == probe) & (rows["metric"] == metric)]
            relative = want_relative and _has_null(prow)
            bn = ", ".join(_ordered_unique(prow["bn_mode"])) or "?"
            ax.set_title(f"{_short(metric)}{' / null' if relative else ''}: {probe} · all · BN {bn}")
            if prow.empty:
                _no_data(ax, f"no layer-wise {metric} on {probe}")
                continue
            agg = _over_seeds(prow, ["group", "epoch", "x"], relative)
            log = relative or use_log_scale(agg["mean"])
            values = _extent(agg, log)
            for key, group in groups.items():
                g = agg[(agg["group"] == key) & np.isfinite(agg["mean"])]
                if g.empty:
                    continue
                seeds[key] = max(seeds.get(key, 0), int(g["n"].max()))
                for role, epoch in _epoch_roles(g["epoch"]).items():
                    s = g[g["epoch"] == epoch].sort_values("x")
                    x = s["x"].to_numpy(dtype=float)
                    ax.plot(x, s["mean"], color=group.color, linestyle=_ROLE_STYLE[role], marker=group.marker, ms=3)
                    if role == "last":  # one band per group keeps the lines readable
                        kinds |= _band(ax, x, s, group.color, log, (0.0, np.inf))
                    used_roles.setdefault(role, set()).add(epoch)
            if relative:
                ax.axhline(1.0, color=_NULL_COLOR, linestyle="--", linewidth=1.0)
                ratio = True
            else:
                nulls = aggregate_seeds(_final_rows(prow), ["group", "x"], "null")
                nulls = nulls[np.isfinite(nulls["mean"])]
                curves = {k: g for k, g in nulls.groupby("group", sort=False)}
                shared = len({tuple(f"{v:.4g}" for v in g["mean"]) for g in curves.values()}) == 1
                for key, g in list(curves.items())[: 1 if shared else None]:
                    color = _NULL_COLOR if shared else groups[key].color
                    ax.plot(g["x"], g["mean"], color=color, linestyle="--", linewidth=0.9)
                    values += list(g["mean"])
                shared_null |= shared and bool(curves)
                group_null |= not shared and bool(curves)
            _limits(ax, values, log, include=1.0 if relative else None)
            ax.set_xticks(range(len(slots)), [names[s] for s in slots], rotation=30, ha="right")
            ax.set_xlim(-0.3, len(slots) - 0.7)
            ax.set_xlabel("depth (block output, globally average-pooled)")
            if c == 0:
                ax.set_ylabel(_metric_label(metric, relative, log))
    handles = [_group_handle(g, _seeds_label(g, seeds[k])) for k, g in groups.items() if k in seeds]
    style: list[Line2D | Patch] = []
    for role in ("first", "early", "last"):
        if role in used_roles:
            epochs = ", ".join(str(e) for e in sorted(used_roles[role]))
            style.append(Line2D([], [], color="0.2", linestyle=_ROLE_STYLE[role], label=f"{role} epoch ({epochs})"))
    style += _interval_handles(kinds, bars=False) + _null_handles(shared_null, group_null, ratio)
    _block_legend(fig, [handles, style])
    return fig


# -------------------------------------------------------------------------------------------------- entry


def make_figures(
    nc_csv: PathArg,
    train_log_csv: PathArg,
    fewshot_csv: PathArg,
    out_dir: PathArg,
    runs_csv: PathArg | None = None,
    names: Sequence[str] = FIGURE_NAMES,
) -> list[Path]:
    """Write the figures ``names`` (default: all of :data:`FIGURE_NAMES`) as PNG and PDF into ``out_dir``.

    ``runs_csv`` (``results/runs.csv``) defines the groups; without it, runs group by learner, backbone and
    width. Every input is read and checked (``ValueError`` naming the file) before any figure is written.
    Returns the written paths, ``{name}.png`` then ``{name}.pdf`` in :data:`FIGURE_NAMES` order.
    """
    unknown = [n for n in names if n not in FIGURE_NAMES]
    if unknown:
        raise ValueError(f"unknown figure name(s) {unknown}; known: {', '.join(FIGURE_NAMES)}")
    nc_all = read_table(nc_csv, "nc")
    logs = read_table(train_log_csv, "train_log")
    shots = read_table(fewshot_csv, "fewshot")
    runs = read_table(runs_csv, "runs") if runs_csv is not None else None
    run_groups = _run_groups([nc_all, logs, shots], runs, str(runs_csv))
    ident = pd.concat([t[list(RUN_COLUMNS)] for t in (nc_all, logs, shots)]).drop_duplicates("run").set_index("run")
    groups = _group_styles(run_groups, ident.drop(columns="seed"))
    nc_all, logs, shots = (t.join(run_groups[["group", "family"]], on="run") for t in (nc_all, logs, shots))
    nc = nc_all[nc_all["layer"] == EMBEDDING]
    val_way = pd.Series(dtype=float)
    if runs is not None and "val.n_way" in runs.columns:
        way = runs.set_index("run")["val.n_way"].map(_number)
        val_way = way.groupby(run_groups["group"]).first().dropna().astype(float)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with matplotlib.style.context("default"), matplotlib.rc_context(_RC):
        for name in (n for n in FIGURE_NAMES if n in names):
            if name == "training":
                fig = _training_figure(logs, groups, val_way)
            elif name == "summary":
                fig = _summary_figure(nc, shots, groups)
            elif name == "model_size":
                fig = _model_size_figure(nc, logs, groups)
            elif name == "learners":
                fig = _learners_figure(nc, shots, groups)
            elif name == "layers":
                fig = _layers_figure(nc_all, groups)
            else:
                fig = _nc_metric_figure(nc, name, groups)
            written.extend(_save(fig, out_dir, name))
    return written
