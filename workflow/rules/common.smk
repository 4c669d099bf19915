# Shared helpers: config validation, the backbone/epoch lists that drive the wildcards, and output paths.
import json

from snakemake.utils import validate

from metacollapse.dvc import configured_backbones
from metacollapse.figures import FIGURE_NAMES


validate(config, schema="../schemas/config.schema.yaml")

# All paths are relative to the working directory (the repo root): data/, results/, logs/.
CONDA_ENV = "../../environment.yml"  # the one environment every rule runs in
RAW_ZIPS = ["images_background.zip", "images_evaluation.zip"]
SPLITS = ["train", "val", "trainval", "test"]
BACKBONES = configured_backbones(config)  # a backbone set to null is dropped
EPOCHS = list(range(1, config["train"]["epochs"] + 1))
FEATURE_EPOCHS = EPOCHS if config["features"]["epochs"] == "all" else sorted(config["features"]["epochs"])
FIGURES = list(FIGURE_NAMES)  # one source of truth: the figures module draws exactly these

if not BACKBONES:
    raise ValueError("config: every entry of `backbones` is null; at least one backbone must remain")
if max(FEATURE_EPOCHS) > config["train"]["epochs"]:
    raise ValueError(
        f"config: features.epochs asks for epoch {max(FEATURE_EPOCHS)} "
        f"but train.epochs is {config['train']['epochs']}"
    )


wildcard_constraints:
    backbone="|".join(BACKBONES),
    epoch=r"\d{3}",
    split="|".join(SPLITS),


def processed(split):
    return f"data/processed/{split}.npy"


def checkpoint(backbone, epoch):
    return f"results/{backbone}/checkpoints/epoch_{int(epoch):03d}.pt"


def compute_flags():
    """CLI options every torch stage shares."""
    return f"--device {config['device']}"


def train_params(wildcards):
    """Everything that determines a backbone's training run, as JSON (a change reruns the job)."""
    spec = {
        "backbone": config["backbones"][wildcards.backbone],
        "seed": config["seed"],
        "train": config["train"],
        "val": config["val"],
    }
    return json.dumps(spec, sort_keys=True)


def probe_splits():
    return sorted({probe["split"] for probe in config["features"]["probes"].values()})


def all_targets():
    targets = [f"results/figures/{name}.{ext}" for name in FIGURES for ext in ("png", "pdf")]
    targets += ["results/nc_metrics.csv"]
    targets += [f"results/{b}/fewshot_accuracy.csv" for b in BACKBONES]
    # Per-epoch files are named targets so that a deleted one is recomputed even though the aggregate table
    # built from it still exists (Snakemake does not regenerate missing intermediates otherwise).
    targets += [f"results/{b}/features/epoch_{e:03d}.npz" for b in BACKBONES for e in FEATURE_EPOCHS]
    targets += [f"results/{b}/nc/epoch_{e:03d}.csv" for b in BACKBONES for e in FEATURE_EPOCHS]
    return targets
