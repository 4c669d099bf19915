"""Does collapse on novel classes predict few-shot accuracy? Rank correlations over the runs and epochs of studies.

    python tools/correlation.py OUT_DIR STUDY_DIR [STUDY_DIR ...] [--replicates 2000] [--seed 0]
        [--include-epoch-0] [--layer embedding] [--min-runs 3]

Each study folder holds ``train_log.csv``, ``fewshot_accuracy.csv``, ``nc_metrics.csv`` and optionally ``runs.csv``.
A run is keyed by (study, run): the same run name in two studies is two runs. Pairs of (NC metric, few-shot
error), one per run and epoch:

* ``val_{w}w{s}s``: the error ``1 - val_acc`` of the training log (validation episodes: novel classes of the val
  split, 5-way 5-shot unless ``runs.csv`` says otherwise through ``val.n_way`` and ``val.n_support``) against the
  metric of the same run and epoch on the probes ``val_episodes`` (set ``query``) and ``test_classes`` (set ``all``);
* ``test_5w5s_final``: ``1 - accuracy`` of the 5-way 5-shot few-shot rows on the split ``test`` (tables without a
  ``split`` column are all ``test``) against ``test_classes`` at the run's final epoch (its last logged epoch);
* ``fashion_test_{w}w{s}s_final``: ``1 - accuracy`` on the split ``fashion_test`` (5-way 5-shot when the run has it,
  else its task with the fewest ways, then the most shots) against every probe whose name starts with
  ``fashion_test`` (set ``all``) at the final epoch: far-domain accuracy exists only for the final checkpoint.

Epoch 0 (the untrained network) is left out unless ``--include-epoch-0``. NC tables without ``layer`` read as
layer ``embedding``; only the layers of ``--layer`` (default ``embedding``) are used. Pairs with a NaN are dropped
and counted.

Spearman's rho is Pearson's correlation of the ranks, ties given their average rank; rho > 0: a larger metric (less
collapse, for NC1, CDNV and the NC2 distances) goes with a larger error. Every point weighs the same, so a run with
more epochs weighs more, in a study and in the pooled rows. The 95% interval is the percentile interval of a cluster
bootstrap: each replicate draws runs (not points) with replacement, since the epochs of one run are not
independent, and takes the rho of all their points (fixed seed). With fewer than ``--min-runs`` runs there is no
interval (NaN and a note); fewer than 3 points give no rho. Intervals from a few runs are narrower than they should
be.

Writes into OUT_DIR (all computed before anything is written, each file atomically):

* ``correlation.csv``: per study, and pooled over all studies (study ``all``) when there are several: one row per
  probe, BN mode, set, layer, metric and error measure with ``n_runs, n_points, n_dropped, rho, ci_low, ci_high,
  replicates`` (bootstrap replicates with a defined rho), ``epoch_0`` (excluded or included) and ``note``;
* ``points.csv``: the pairs used;
* ``correlation.png``: rho and its interval per metric and pairing (pooled rows), and the metric against the error
  for the two strongest correlations. Drawn with matplotlib's Figure API; deterministic bytes (default style, no
  PNG metadata).
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import matplotlib.style
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from metacollapse.atomic import atomic_write_bytes
from metacollapse.tables import read_table

NOVEL_PROBES: dict[str, str] = {"val_episodes": "query", "test_classes": "all"}  # probe -> set
FINAL_PROBE = "test_classes"
FAR_PREFIX = "fashion_test"
FAR_SET = "all"
TASK = (5, 5)  # (n_way, n_shot) of the validation episodes and of the test error
POOLED = "all"
MIN_POINTS = 3
CONFIDENCE = 0.95
CHUNK = 256  # bootstrap replicates per vectorised block
DPI = 150
GROUP = ["probe", "bn_mode", "set", "layer", "metric", "error_measure"]
POINT_COLUMNS = ["study", "run", "epoch", *GROUP[:5], "value", "error_measure", "error"]
RESULT_COLUMNS = [
    "study",
    *GROUP,
    "n_runs",
    "n_points",
    "n_dropped",
    "rho",
    "ci_low",
    "ci_high",
    "replicates",
    "epoch_0",
    "note",
]


# ------------------------------------------------------------------------------------------------- statistics


def _double_ranks(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Twice the average ranks of ``values`` [n] in samples where point i appears ``weights[b, i]`` times [B, n].

    A tie group of total weight G after C smaller points holds ranks C+1..C+G, average C + (G+1)/2; doubled it is an
    integer, so the sums below are exact for samples of up to millions of points.
    """
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    group_of = np.cumsum(np.r_[True, ordered[1:] != ordered[:-1]]) - 1
    group_weight = np.add.reduceat(weights[:, order], starts, axis=1)
    before = np.cumsum(group_weight, axis=1) - group_weight
    ranks = np.empty_like(weights, dtype=np.float64)
    ranks[:, order] = (2 * before + group_weight + 1)[:, group_of]
    return ranks


def weighted_spearman(x: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Spearman's rho of each sample b in which point i appears ``weights[b, i]`` times; NaN for a constant rank."""
    w = np.asarray(weights, dtype=np.float64)
    rx, ry = _double_ranks(np.asarray(x, dtype=np.float64), w), _double_ranks(np.asarray(y, dtype=np.float64), w)
    total = w.sum(axis=1)
    sx, sy = (w * rx).sum(axis=1), (w * ry).sum(axis=1)
    # n * sum(w r s) - sum(w r) sum(w s) is n^2 times the covariance, without a rounded mean.
    cov = total * (w * rx * ry).sum(axis=1) - sx * sy
    var_x = total * (w * rx * rx).sum(axis=1) - sx * sx
    var_y = total * (w * ry * ry).sum(axis=1) - sy * sy
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = cov / np.sqrt(var_x * var_y)
    rho[(var_x <= 0) | (var_y <= 0)] = np.nan
    return np.clip(rho, -1.0, 1.0)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho of the pairs (x, y): Pearson's correlation of the average ranks; NaN if either is constant."""
    x = np.asarray(x, dtype=np.float64)
    return float(weighted_spearman(x, np.asarray(y, dtype=np.float64), np.ones((1, x.size)))[0])


def bootstrap_rhos(x: np.ndarray, y: np.ndarray, clusters: np.ndarray, replicates: int, seed: int) -> np.ndarray:
    """Spearman's rho of ``replicates`` cluster-bootstrap samples: each draws as many clusters as there are, with
    replacement, and keeps all points of every cluster drawn (as often as it was drawn)."""
    names, cluster_of = np.unique(clusters, return_inverse=True)
    k = names.size
    draws = np.random.default_rng(seed).integers(0, k, size=(replicates, k))
    rhos = np.empty(replicates)
    for start in range(0, replicates, CHUNK):
        block = draws[start : start + CHUNK]
        flat = (block + k * np.arange(block.shape[0])[:, None]).ravel()
        counts = np.bincount(flat, minlength=block.size).reshape(block.shape)
        rhos[start : start + CHUNK] = weighted_spearman(x, y, counts[:, cluster_of])
    return rhos


def correlate(x, y, clusters, replicates: int, seed: int, min_runs: int) -> dict[str, object]:
    """rho of the pairs, its percentile cluster-bootstrap interval and a note when either is undefined."""
    n_runs, n_points = len(set(clusters)), len(x)
    out = {"n_runs": n_runs, "n_points": n_points, "rho": np.nan, "ci_low": np.nan, "ci_high": np.nan}
    out |= {"replicates": 0, "note": ""}
    if n_points < MIN_POINTS:
        out["note"] = f"{n_points} point(s): no rho (needs {MIN_POINTS})"
        return out
    out["rho"] = spearman(x, y)
    if np.isnan(out["rho"]):
        out["note"] = "a constant metric or error: no rho"
    elif n_runs < min_runs:
        out["note"] = f"{n_runs} run(s): no interval (the bootstrap resamples runs; needs {min_runs})"
    else:
        rhos = bootstrap_rhos(np.asarray(x), np.asarray(y), np.asarray(clusters), replicates, seed)
        rhos = rhos[np.isfinite(rhos)]
        out["replicates"] = rhos.size
        if rhos.size:
            tail = 100 * (1 - CONFIDENCE) / 2
            out["ci_low"], out["ci_high"] = (float(v) for v in np.percentile(rhos, [tail, 100 - tail]))
    return out


# ---------------------------------------------------------------------------------------------------- reading


def read_study(folder: Path) -> dict[str, pd.DataFrame]:
    """The study's NC table, training log, few-shot table (:func:`metacollapse.tables.read_table`: checked, typed,
    older layouts read as today's) and the validation task of each run listed in runs.csv."""
    nc = read_table(folder / "nc_metrics.csv", "nc")
    logs = read_table(folder / "train_log.csv", "train_log")
    shots = read_table(folder / "fewshot_accuracy.csv", "fewshot")
    val = pd.DataFrame({"run": pd.Series(dtype=str), "val_way": np.nan, "val_shot": np.nan})
    if (folder / "runs.csv").is_file():
        runs = read_table(folder / "runs.csv", "runs")
        columns = {"val.n_way": "val_way", "val.n_support": "val_shot"}
        val = runs.reindex(columns=["run", *columns]).rename(columns=columns)
        val[list(columns.values())] = val[list(columns.values())].apply(pd.to_numeric, errors="coerce")
    return {"nc": nc, "logs": logs, "shots": shots, "val": val}


# ---------------------------------------------------------------------------------------------------- pairing


def _task(way: float, shot: float) -> str:
    return f"{way:g}w{shot:g}s"


def _far_task(rows: pd.DataFrame) -> pd.DataFrame:
    """Per run, the 5-way 5-shot row if any, else the one with the fewest ways and then the most shots."""
    preferred = (rows["n_way"] == TASK[0]) & (rows["n_shot"] == TASK[1])
    ranked = rows.assign(_p=~preferred, _s=-rows["n_shot"]).sort_values(["run", "_p", "n_way", "_s"], kind="stable")
    return ranked.drop_duplicates("run").drop(columns=["_p", "_s"])


def pair(study: str, tables: dict[str, pd.DataFrame], layers: Sequence[str], include_epoch_0: bool) -> pd.DataFrame:
    """Every (metric, error) pair of one study, NaNs kept, with the columns of points.csv."""
    nc, logs, shots = tables["nc"], tables["logs"], tables["shots"]
    nc = nc[nc["layer"].isin(layers)].rename(columns={"mean": "value"})
    novel = pd.Series(list(zip(nc["probe"], nc["set"], strict=True)), index=nc.index).isin(NOVEL_PROBES.items())
    far = nc["probe"].str.startswith(FAR_PREFIX) & (nc["set"] == FAR_SET)
    final = logs.groupby("run", as_index=False)["epoch"].max()
    parts = []

    val = logs.merge(tables["val"], on="run", how="left").fillna({"val_way": TASK[0], "val_shot": TASK[1]})
    tasks = [f"val_{_task(w, s)}" for w, s in zip(val["val_way"], val["val_shot"], strict=True)]
    val = val.assign(error=1 - val["val_acc"], error_measure=tasks)
    parts.append(nc[novel].merge(val[["run", "epoch", "error_measure", "error"]], on=["run", "epoch"]))

    def at_final(rows: pd.DataFrame, split: str, accuracy: pd.DataFrame) -> pd.DataFrame:
        tasks = [f"{split}_{_task(w, s)}_final" for w, s in zip(accuracy["n_way"], accuracy["n_shot"], strict=True)]
        accuracy = accuracy.assign(error=1 - accuracy["accuracy"], error_measure=tasks)
        rows = rows.merge(final, on=["run", "epoch"])
        return rows.merge(accuracy[["run", "error_measure", "error"]], on="run")

    test = shots[(shots["split"] == "test") & (shots["n_way"] == TASK[0]) & (shots["n_shot"] == TASK[1])]
    on_test = (nc["probe"] == FINAL_PROBE) & (nc["set"] == NOVEL_PROBES[FINAL_PROBE])
    parts.append(at_final(nc[on_test], "test", test))
    parts.append(at_final(nc[far], FAR_PREFIX, _far_task(shots[shots["split"] == FAR_PREFIX])))
    points = pd.concat(parts, ignore_index=True).assign(study=study)
    if not include_epoch_0:
        points = points[points["epoch"] > 0]
    return points[POINT_COLUMNS]


def correlations(
    points: pd.DataFrame, studies: Sequence[str], replicates: int, seed: int, min_runs: int, include_epoch_0: bool
) -> pd.DataFrame:
    """One row per study (then ``all`` when there are several) and group of GROUP columns."""
    sets = [(name, points[points["study"] == name]) for name in studies]
    if len(studies) > 1:
        sets.append((POOLED, points))
    rows = []
    for name, subset in sets:
        for key, group in subset.groupby(GROUP, sort=True):
            kept = group.dropna(subset=["value", "error"])
            clusters = [f"{s}\0{r}" for s, r in zip(kept["study"], kept["run"], strict=True)]
            stats = correlate(kept["value"].to_numpy(), kept["error"].to_numpy(), clusters, replicates, seed, min_runs)
            stats |= {"n_dropped": len(group) - len(kept), "epoch_0": "included" if include_epoch_0 else "excluded"}
            rows.append({"study": name, **dict(zip(GROUP, key, strict=True)), **stats})
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


# ---------------------------------------------------------------------------------------------------- drawing


def _label(row: pd.Series, layers: bool) -> str:
    layer = f" [{row['layer']}]" if layers else ""
    return f"{row['probe']}/{row['set']}{layer} vs {row['error_measure']} error"


def _interval(row: pd.Series) -> str:
    return f"[{row['ci_low']:+.2f}, {row['ci_high']:+.2f}]" if np.isfinite(row["ci_low"]) else "[no interval]"


def ranked(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows with a rho, strongest first: those with an interval before those without, then by |rho|. Metrics with the
    same rho and interval on one pairing (the same ranks, e.g. nc1 and nc1_paper) share a row, named in ``metrics``."""
    rows = rows[np.isfinite(rows["rho"])]
    same = [*(c for c in GROUP if c != "metric"), "rho", "ci_low", "ci_high"]
    names = rows.groupby(same, sort=False, dropna=False)["metric"].transform(" = ".join)
    rows = rows.assign(metrics=names).drop_duplicates(same)
    keys = rows.assign(_ci=~np.isfinite(rows["ci_low"]), _abs=-rows["rho"].abs())
    return keys.sort_values(["_ci", "_abs", *GROUP], kind="stable").drop(columns=["_ci", "_abs"])


def _forest(ax: Axes, rows: pd.DataFrame, layers: bool) -> None:
    metrics = sorted(rows["metric"].unique())
    series = rows[[c for c in GROUP if c != "metric"]].drop_duplicates().sort_values(GROUP[:-2] + GROUP[-1:])
    offsets = np.linspace(-0.3, 0.3, len(series)) if len(series) > 1 else [0.0]
    colors = matplotlib.colormaps["tab10"].colors
    for i, (offset, (_, s)) in enumerate(zip(offsets, series.iterrows(), strict=True)):
        sub = rows.merge(s.to_frame().T, on=list(s.index))
        y = np.array([metrics.index(m) for m in sub["metric"]]) + offset
        color = colors[i % len(colors)]
        label = f"{_label(s, layers)} ({sub['n_runs'].max()} runs, {sub['n_points'].max()} points)"
        has = np.isfinite(sub["ci_low"]).to_numpy()
        rho = sub["rho"].to_numpy()
        err = np.abs(np.vstack([rho - sub["ci_low"], sub["ci_high"] - rho]))
        if has.any():
            ax.errorbar(rho[has], y[has], xerr=err[:, has], fmt="o", ms=4, color=color, capsize=2, label=label)
        if not has.all():
            ax.plot(rho[~has], y[~has], "o", ms=4, mfc="none", color=color, label=None if has.any() else label)
    ax.axvline(0, color="0.4", lw=0.8)
    ax.set_yticks(range(len(metrics)), metrics)
    ax.set_ylim(len(metrics) - 0.5, -0.5)
    ax.set_xlim(-1.05, 1.05)
    ax.set_xlabel("Spearman rho (metric, few-shot error); bar: 95% interval resampling runs; open: no interval")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)


def _log(values: pd.Series) -> bool:
    values = values[np.isfinite(values)]
    return bool(len(values) and (values > 0).all() and values.max() / values.min() > 100)


def _scatter(ax: Axes, points: pd.DataFrame, row: pd.Series, layers: bool, study_colors: dict[str, object]) -> None:
    sub = points.merge(row[GROUP].to_frame().T, on=GROUP)
    if row["study"] != POOLED:
        sub = sub[sub["study"] == row["study"]]
    for study, rows in sub.groupby("study", sort=False):
        for _, run in rows.groupby("run", sort=True):
            run = run.sort_values("epoch")
            ax.plot(run["value"], run["error"], "-", lw=0.6, alpha=0.35, color=study_colors[study])
        ax.plot(rows["value"], rows["error"], "o", ms=3, color=study_colors[study], label=study)
    ax.set_xscale("log" if _log(sub["value"]) else "linear")
    ax.set_yscale("log" if _log(sub["error"]) else "linear")
    ax.set_xlabel(f"{row['metrics']} on {row['probe']}/{row['set']}" + (f" [{row['layer']}]" if layers else ""))
    ax.set_ylabel(f"few-shot error ({row['error_measure']})")
    ax.set_title(f"rho {row['rho']:+.2f} {_interval(row)}, {row['n_runs']} runs, {row['n_points']} points", fontsize=8)
    ax.legend(fontsize=7, frameon=False)


def figure(table: pd.DataFrame, points: pd.DataFrame, studies: Sequence[str]) -> bytes:
    """The PNG of correlation.png: the pooled rows (or the one study's) and the two strongest correlations."""
    shown = POOLED if len(studies) > 1 else studies[0]
    rows = table[table["study"] == shown]
    layers = rows["layer"].nunique() > 1
    strongest = ranked(rows).head(2)
    study_colors = dict(zip(studies, matplotlib.colormaps["tab10"].colors * 10, strict=False))
    with matplotlib.style.context("default"), matplotlib.rc_context({"font.size": 8, "svg.hashsalt": "metacollapse"}):
        fig = Figure(figsize=(12, 3 + 0.45 * max(rows["metric"].nunique(), 4)), layout="constrained")
        grid = fig.add_gridspec(2, 2, height_ratios=[max(rows["metric"].nunique(), 4) * 0.45, 3.2])
        epochs = "epoch 0 " + table["epoch_0"].iloc[0] if len(table) else ""
        _forest(fig.add_subplot(grid[0, :]), rows, layers)
        fig.suptitle(f"Does collapse on novel classes predict few-shot error? Study: {shown} ({epochs})", fontsize=10)
        for i in range(2):
            ax = fig.add_subplot(grid[1, i])
            if i < len(strongest):
                _scatter(ax, points, strongest.iloc[i], layers, study_colors)
            else:
                ax.text(0.5, 0.5, "no further correlation", ha="center", va="center", transform=ax.transAxes)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------------------- main


def _line(row: pd.Series) -> str:
    return (
        f"  rho {row['rho']:+.2f} {_interval(row)}  {row['metrics']} on {row['probe']}/{row['set']} ({row['layer']})"
        f" vs {row['error_measure']} error; {row['n_runs']} run(s), {row['n_points']} points"
    )


def summary(table: pd.DataFrame, points: pd.DataFrame, dropped: int, studies: Sequence[str]) -> str:
    runs = points[["study", "run"]].drop_duplicates()
    epoch_0 = table["epoch_0"].iloc[0]
    lines = [
        f"{len(studies)} studies, {len(runs)} runs, {len(points)} pairs (epoch 0 {epoch_0}; "
        f"{dropped} pairs with NaN dropped)"
    ]
    shown = POOLED if len(studies) > 1 else studies[0]
    order = ranked(table[table["study"] == shown])
    lines.append(f"strongest ({shown}):")
    lines += [_line(r) for _, r in order.head(3).iterrows()]
    lines.append(f"weakest ({shown}):")
    lines += [_line(r) for _, r in order[np.isfinite(order["ci_low"])].tail(3).iloc[::-1].iterrows()]
    if len(studies) > 1:
        lines.append("strongest per study:")
        for name in studies:
            best = ranked(table[table["study"] == name]).head(1)
            lines += [f"{name}:" + _line(r)[1:] for _, r in best.iterrows()] or [f"  {name}: no correlation"]
    return "\n".join(lines)


def run(
    out_dir: Path,
    folders: Sequence[Path],
    replicates: int = 2000,
    seed: int = 0,
    min_runs: int = 3,
    include_epoch_0: bool = False,
    layers: Sequence[str] = ("embedding",),
) -> str:
    """Read every study, compute, draw, then write the three files; returns the summary."""
    studies = [Path(f).name for f in folders]
    clash = {s for s in studies if studies.count(s) > 1 or s == POOLED}
    if clash:
        raise ValueError(f"study folder names must be distinct and not {POOLED!r}: {sorted(clash)} in {list(folders)}")
    studied = [
        pair(name, read_study(Path(f)), layers, include_epoch_0) for name, f in zip(studies, folders, strict=True)
    ]
    points = pd.concat(studied, ignore_index=True)
    if points.empty:
        raise ValueError(
            f"{', '.join(map(str, folders))}: no NC rows on {sorted(NOVEL_PROBES)} or {FAR_PREFIX}* for layer(s) "
            f"{list(layers)} pair with a logged epoch"
        )
    table = correlations(points, studies, replicates, seed, min_runs, include_epoch_0)
    used = points.dropna(subset=["value", "error"])
    png = figure(table, used, studies)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / "correlation.csv", table.to_csv(index=False, float_format="%.6g").encode())
    atomic_write_bytes(out_dir / "points.csv", used.to_csv(index=False, float_format="%.9g").encode())
    atomic_write_bytes(out_dir / "correlation.png", png)
    return summary(table, used, len(points) - len(used), studies)


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="correlation.py", description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("studies", type=Path, nargs="+", metavar="STUDY_DIR")
    parser.add_argument("--replicates", type=int, default=2000, help="bootstrap replicates (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    parser.add_argument("--min-runs", type=int, default=3, help="fewest runs for an interval (default 3)")
    parser.add_argument("--include-epoch-0", action="store_true", help="keep the untrained network's epoch 0")
    parser.add_argument("--layer", action="append", help="layer of the NC table to use (repeatable; default embedding)")
    args = parser.parse_args(argv)
    if args.replicates < 1 or args.min_runs < 2:
        parser.error(f"--replicates must be >= 1 and --min-runs >= 2 (got {args.replicates}, {args.min_runs})")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    try:
        layers = args.layer or ["embedding"]
        print(run(args.out_dir, args.studies, args.replicates, args.seed, args.min_runs, args.include_epoch_0, layers))
    except (ValueError, OSError) as exc:
        print(f"correlation.py: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out_dir / 'correlation.csv'}, points.csv and correlation.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
