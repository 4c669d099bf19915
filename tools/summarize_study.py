"""Summarise a finished study for docs/results/: copy its tables and figures, and write summary.csv.

    python tools/summarize_study.py STUDY_WORKDIR docs/results/NAME

summary.csv has one row per group (runs that differ only by seed) and quantity: the few-shot accuracies, and the
NC metrics at epoch 0 and at the last epoch on every probe (query features of episodic probes, whole class
probes, and the classifier set where a learner has a real head), as mean and 95% t-interval over seeds
(metacollapse.figures.mean_ci), with the metric's null value. Every number a study README quotes comes from it
or from the copied tables.

jobs.csv has one row per job of the study's Snakemake run (the newest log in .snakemake/log that finished jobs):
rule, run, start, end and seconds, then a row ``workflow`` from Snakemake's start to its last finished job.
"""

from __future__ import annotations

import re
import shutil
import sys
from datetime import datetime
from pathlib import Path

import pandas as pd

from metacollapse.figures import GROUP_COLUMNS, mean_ci

METRICS = ("nc1_paper", "nc1_quotient", "cdnv", "cdnv_dir", "erank", "nc2_etf_rownorm", "nc3", "nc4")
#: The sets summarised: per-episode query features, whole class probes, and a learner's real linear head.
SETS = ("query", "all", "classifier")


def summarize(workdir: Path, out: Path) -> pd.DataFrame:
    results = workdir / "results"
    out.mkdir(parents=True, exist_ok=True)
    for name in ("train_log.csv", "fewshot_accuracy.csv", "nc_metrics.csv"):
        shutil.copy(results / name, out / name)
    shutil.copytree(results / "figures", out / "figures", dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.pdf"))
    logs, shots, nc = (pd.read_csv(results / n) for n in ("train_log.csv", "fewshot_accuracy.csv", "nc_metrics.csv"))
    for table in (logs, shots, nc):
        table["width"] = table["width"].fillna(-1).astype(int)  # -1: a backbone without a width (ResNet-18)
    last = nc["epoch"].max()
    final = nc[nc["epoch"].isin([0, last]) & nc["metric"].isin(METRICS) & nc["set"].isin(SETS)]
    keys = list(GROUP_COLUMNS)
    records = []
    for group, rows in shots.groupby(keys):
        for (way, shot), s in rows.groupby(["n_way", "n_shot"]):
            mean, ci, n = mean_ci(100 * s["accuracy"].to_numpy())
            records.append((*group, f"acc_{way}w{shot}s", "test", "", last, mean, ci, n, float("nan")))
    for group, rows in final.groupby(keys):
        for (probe, set_name, metric, epoch), s in rows.groupby(["probe", "set", "metric", "epoch"]):
            mean, ci, n = mean_ci(s["mean"].to_numpy())
            records.append((*group, metric, probe, set_name, epoch, mean, ci, n, float(s["null"].mean())))
    table = pd.DataFrame.from_records(
        records, columns=[*keys, "quantity", "probe", "set", "epoch", "mean", "ci95", "seeds", "null"]
    )
    size = logs.groupby(keys)[["n_params", "dim"]].first().reset_index()
    table = table.merge(size, on=keys, how="left")
    table.to_csv(out / "summary.csv", index=False, float_format="%.6g")
    job_times(workdir).to_csv(out / "jobs.csv", index=False)
    return table


def job_times(workdir: Path) -> pd.DataFrame:
    """Start, end and seconds of every finished job in the newest Snakemake log of ``workdir`` that ran jobs."""
    logs = sorted((workdir / ".snakemake" / "log").glob("*.snakemake.log"), key=lambda p: p.stat().st_mtime)
    text = next((s for s in (p.read_text() for p in reversed(logs)) if "Finished jobid" in s), None)
    if text is None:
        raise SystemExit(f"{workdir / '.snakemake' / 'log'}: no Snakemake log with finished jobs")
    began = datetime.strptime(re.search(r"Date: (.+)", text).group(1).strip(), "%Y-%m-%d %H:%M:%S")
    now, jobs, rows = began, {}, []
    for line in text.splitlines():
        if stamp := re.match(r"\[(\w{3} \w{3} +\d+ [\d:]+ \d{4})\]", line):
            now = datetime.strptime(stamp.group(1), "%a %b %d %H:%M:%S %Y")
        elif rule := re.match(r"(?:local)?rule (\w+):", line):
            current = {"rule": rule.group(1), "run": "", "start": now}
        elif jobid := re.match(r"\s+jobid: (\d+)", line):
            jobs[jobid.group(1)] = current
        elif run := re.match(r"\s+wildcards: run=(\S+)", line):
            current["run"] = run.group(1)
        elif done := re.match(r"Finished jobid: (\d+)", line):
            job = jobs[done.group(1)]
            rows.append({**job, "end": now, "seconds": (now - job["start"]).total_seconds()})
    rows.append({"rule": "workflow", "run": "", "start": began, "end": now, "seconds": (now - began).total_seconds()})
    return pd.DataFrame(rows, columns=["rule", "run", "start", "end", "seconds"])


if __name__ == "__main__":
    summarize(Path(sys.argv[1]), Path(sys.argv[2]))
