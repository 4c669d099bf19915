"""The comparisons of docs/results/paper/: GPU against CPU for Conv-4, and ResNet-18 against Conv-4.

    python tools/paper_comparison.py docs/results/paper docs/results/paper_conv4

Writes into the first folder:
- ``accuracy_gpu_vs_cpu.csv``: Conv-4's few-shot accuracy in both runs (same protocol, same test episodes), the
  difference, the half-width of its 95% interval (the two runs' normal half-widths combined in quadrature, as for
  independent estimates) and whether the difference lies inside it;
- ``nc_gpu_vs_cpu.csv``: Conv-4's NC metrics in both runs per epoch, probe and metric, with the relative difference;
- ``backbones.csv``: ResNet-18 against Conv-4 per epoch, probe and metric: raw values, their Gaussian nulls and the
  null-relative values (metric / null), each as a ResNet-18 / Conv-4 ratio.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pandas as pd

from metacollapse.tables import read_table

KEY = ["probe", "bn_mode", "layer", "set", "metric", "epoch"]
EPOCHS = (0, 1, 10, 50, 100)


def accuracy(gpu: pd.DataFrame, cpu: pd.DataFrame) -> pd.DataFrame:
    on = ["run", "split", "n_way", "n_shot"]
    both = gpu.merge(cpu, on=on, suffixes=("_gpu", "_cpu"))
    both = both[both["run"] == "conv4"]
    both["difference"] = both["accuracy_gpu"] - both["accuracy_cpu"]
    both["ci95_difference"] = [math.hypot(a, b) for a, b in zip(both["ci95_gpu"], both["ci95_cpu"], strict=True)]
    both["agree"] = both["difference"].abs() <= both["ci95_difference"]
    return both[[*on, "accuracy_gpu", "ci95_gpu", "accuracy_cpu", "ci95_cpu", "difference", "ci95_difference", "agree"]]


def nc_gpu_vs_cpu(gpu: pd.DataFrame, cpu: pd.DataFrame) -> pd.DataFrame:
    pick = lambda t: t[(t["run"] == "conv4") & t["epoch"].isin(EPOCHS)][[*KEY, "mean", "null"]]  # noqa: E731
    both = pick(gpu).merge(pick(cpu), on=KEY, suffixes=("_gpu", "_cpu"))
    both["relative_difference"] = (both["mean_gpu"] - both["mean_cpu"]) / both["mean_cpu"].abs()
    return both.sort_values(KEY, kind="stable")


def backbones(nc: pd.DataFrame) -> pd.DataFrame:
    rows = nc[nc["epoch"].isin(EPOCHS)]
    wide = rows.pivot(index=KEY, columns="run", values=["mean", "null"])  # one row per key and run, or an error
    out = pd.DataFrame(
        {
            "conv4": wide[("mean", "conv4")],
            "resnet18": wide[("mean", "resnet18")],
            "null_conv4": wide[("null", "conv4")],
            "null_resnet18": wide[("null", "resnet18")],
        }
    )
    out["raw_ratio"] = out["resnet18"] / out["conv4"]
    out["null_ratio"] = out["null_resnet18"] / out["null_conv4"]
    out["relative_conv4"] = out["conv4"] / out["null_conv4"]
    out["relative_resnet18"] = out["resnet18"] / out["null_resnet18"]
    out["relative_ratio"] = out["relative_resnet18"] / out["relative_conv4"]
    return out.reset_index()


def main(paper: Path, conv4_cpu: Path) -> None:
    kinds = {"fewshot_accuracy.csv": "fewshot", "nc_metrics.csv": "nc"}
    read = lambda folder, name: read_table(folder / name, kinds[name])  # noqa: E731
    accuracy(read(paper, "fewshot_accuracy.csv"), read(conv4_cpu, "fewshot_accuracy.csv")).to_csv(
        paper / "accuracy_gpu_vs_cpu.csv", index=False, float_format="%.6g"
    )
    nc = read(paper, "nc_metrics.csv")
    nc_gpu_vs_cpu(nc, read(conv4_cpu, "nc_metrics.csv")).to_csv(
        paper / "nc_gpu_vs_cpu.csv", index=False, float_format="%.6g"
    )
    backbones(nc).to_csv(paper / "backbones.csv", index=False, float_format="%.6g")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
