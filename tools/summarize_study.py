"""Summarise a finished study for docs/results/: copy its tables and figures, and write summary.csv and jobs.csv.

    python tools/summarize_study.py STUDY_WORKDIR docs/results/NAME

summary.csv has one row per group and quantity. A group is the runs that differ only by seed: learner, backbone,
width and every other key of results/runs.csv that varies across the runs (one column each). The quantities are
the few-shot accuracies per split (in ``probe``), and the NC metrics at every dumped epoch and layer (``layer``:
``embedding`` or a block of the backbone) on every probe (query features of episodic probes, whole class probes,
and the classifier set where a learner has a real head), as mean and 95% t-interval over seeds
(metacollapse.stats.mean_ci), with the metric's null value. Every number a study README quotes comes from it or from
the copied tables.

jobs.csv has one row per job from Snakemake's benchmark files (benchmarks/<rule>/<run>.tsv, or
benchmarks/<rule>.tsv for a rule without a run): rule, run, wall-clock seconds, peak resident memory (MiB) and
CPU seconds.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pandas as pd

from metacollapse.stats import mean_ci
from metacollapse.tables import RUN_COLUMN_KEYS, read_table, varying_keys

METRICS = (
    "nc1_paper", "nc1_quotient", "cdnv", "cdnv_dir", "erank", "gnc2", "nc2_etf_rownorm", "nc2_equinorm",
    "nc2_equiangularity", "nc3", "nc4",
)  # fmt: skip
#: The sets summarised: per-episode query features, whole class probes, a learner's real linear head, and ProtoNet
#: as a linear classifier (nc3, nc4 of its prototypes).
SETS = ("query", "all", "classifier", "protonet")
TABLES = {"train_log.csv": "train_log", "fewshot_accuracy.csv": "fewshot", "nc_metrics.csv": "nc"}


def summarize(workdir: Path, out: Path) -> pd.DataFrame:
    results = workdir / "results"
    out.mkdir(parents=True, exist_ok=True)
    logs, shots, nc = (read_table(results / name, kind) for name, kind in TABLES.items())
    has_runs = (results / "runs.csv").is_file()
    for name in [*TABLES, *(["runs.csv"] if has_runs else [])]:
        shutil.copy(results / name, out / name)
    shutil.copytree(results / "figures", out / "figures", dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.pdf"))
    extras: list[str] = []
    if has_runs:
        runs = read_table(results / "runs.csv", "runs")
        runs = runs[runs["run"].isin(set(logs["run"]) | set(shots["run"]) | set(nc["run"]))]
        extras = [k for k in varying_keys(runs) if k not in RUN_COLUMN_KEYS]
        logs, shots, nc = (t.merge(runs[["run", *extras]], on="run", how="left") for t in (logs, shots, nc))
    keys = ["learner", "backbone", "width", *extras]
    for table in (logs, shots, nc):
        table["width"] = table["width"].fillna(-1).astype(int)  # -1: a backbone without a width (ResNet-18)
        table[extras] = table[extras].fillna("")
    last = nc["epoch"].max()
    measured = nc[nc["metric"].isin(METRICS) & nc["set"].isin(SETS)]
    records = []
    for group, rows in shots.groupby(keys):
        for (split, way, shot), s in rows.groupby(["split", "n_way", "n_shot"]):
            mean, ci, n = mean_ci(100 * s["accuracy"].to_numpy())
            records.append((*group, f"acc_{way}w{shot}s", split, "", "", last, mean, ci, n, float("nan")))
    for group, rows in measured.groupby(keys):
        for (probe, set_name, layer, metric, epoch), s in rows.groupby(["probe", "set", "layer", "metric", "epoch"]):
            mean, ci, n = mean_ci(s["mean"].to_numpy())
            records.append((*group, metric, probe, set_name, layer, epoch, mean, ci, n, float(s["null"].mean())))
    table = pd.DataFrame.from_records(
        records, columns=[*keys, "quantity", "probe", "set", "layer", "epoch", "mean", "ci95", "seeds", "null"]
    )
    size = logs.groupby(keys)[["n_params", "dim"]].first().reset_index()
    table = table.merge(size, on=keys, how="left")
    table.to_csv(out / "summary.csv", index=False, float_format="%.6g")
    jobs = job_times(workdir)
    if jobs is not None:
        jobs.to_csv(out / "jobs.csv", index=False, float_format="%.6g")
    return table


def job_times(workdir: Path) -> pd.DataFrame | None:
    """One row per Snakemake benchmark file under ``workdir/benchmarks`` (the mean of its repeats), or None."""
    folder = workdir / "benchmarks"
    files = sorted(folder.rglob("*.tsv")) if folder.is_dir() else []
    if not files:
        print(
            f"{folder}: no Snakemake benchmark files (benchmarks/<rule>/<run>.tsv); jobs.csv not written",
            file=sys.stderr,
        )
        return None
    rows = []
    for path in files:
        parts = path.relative_to(folder).with_suffix("").parts
        bench = pd.read_csv(path, sep="\t", na_values=["-", "NA"])
        if "s" not in bench.columns or bench.empty:
            raise ValueError(f"{path}: not a Snakemake benchmark file (expected a column 's'; found {list(bench)})")
        rows.append(
            {
                "rule": parts[0],
                "run": "/".join(parts[1:]),
                "seconds": bench["s"].mean(),
                "max_rss_mib": bench["max_rss"].mean() if "max_rss" in bench else float("nan"),
                "cpu_seconds": bench["cpu_time"].mean() if "cpu_time" in bench else float("nan"),
            }
        )
    return pd.DataFrame(rows).sort_values(["rule", "run"], kind="stable").reset_index(drop=True)


if __name__ == "__main__":
    summarize(Path(sys.argv[1]), Path(sys.argv[2]))
