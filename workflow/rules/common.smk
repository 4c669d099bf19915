# Config validation, the runs the wildcards range over, and the paths every rule shares.
# Standard library only: the workflow parses and lints with Snakemake alone; the tool code runs inside the rules.
import copy
import hashlib
import importlib.util
import itertools
import json
import os
import re
from pathlib import Path

from snakemake.utils import validate

validate(config, schema="../schemas/config.schema.yaml")

RAW_ZIPS = ["images_background.zip", "images_evaluation.zip"]
SPLITS = ["train", "val", "trainval", "test"]
EPOCHS = list(range(0, config["epochs"] + 1))  # epoch 0 is the untrained network
FIGURES = ["nc1", "nc1_paper", "nc1_quotient", "cdnv", "cdnv_dir", "erank", "nc2_etf_rownorm", "nc2_etf",
           "nc2_equinorm", "nc2_equiangularity", "nc2_maxangle", "nc3", "nc4", "training", "summary",
           "model_size", "learners"]  # fmt: skip


def deep_merge(base, override):
    """``base`` with ``override`` merged in key by key (nested dicts merge, everything else replaces)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def set_dotted(tree, dotted, value):
    *parents, last = dotted.split(".")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[last] = value


def get_dotted(tree, dotted, sweep):
    for key in dotted.split("."):
        if not isinstance(tree, dict) or key not in tree:
            raise ValueError(f"config sweeps.{sweep}: the name template names {{{dotted}}}, which the run does not set")
        tree = tree[key]
    return tree


def expand_runs(config):
    """Every run of the config: ``runs`` plus the grid of every sweep, each merged over ``defaults``."""
    runs = {}

    def add(name, override, origin):
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]*", name):
            raise ValueError(f"config {origin}: run name {name!r} must start with a letter and hold only letters, "
                             "digits, '_', '.' and '-'")  # fmt: skip
        if name in runs:
            raise ValueError(f"config {origin}: run name {name!r} is defined twice")
        spec = deep_merge(config["defaults"], override)
        spec["train"]["epochs"] = config["epochs"]
        runs[name] = {"name": name, **spec}

    for name, override in (config.get("runs") or {}).items():
        if override is not None:  # null drops a run inherited from the default config
            add(name, override, f"runs.{name}")
    for sweep, body in (config.get("sweeps") or {}).items():
        if body is None:
            continue
        keys = list(body["grid"])
        template = body.get("name") or "_".join([sweep, *(f"{k.split('.')[-1]}{{{k}}}" for k in keys)])
        for values in itertools.product(*body["grid"].values()):
            override = copy.deepcopy(body.get("run") or {})
            for key, value in zip(keys, values):
                set_dotted(override, key, value)
            name = re.sub(r"\{([^}]+)\}", lambda m: str(get_dotted(override, m.group(1), sweep)), template)
            add(name, override, f"sweeps.{sweep}")
    if not runs:
        raise ValueError("config: no runs (every entry of `runs` is null and there are no sweeps)")
    for name, spec in runs.items():
        if "arch" not in spec.get("backbone", {}):
            raise ValueError(f"config: run {name!r} has no backbone.arch (set it in runs.{name} or the sweep)")
    return runs


RUNS = expand_runs(config)
if config["features"]["epochs"] == "all":
    FEATURE_EPOCHS = EPOCHS
else:
    FEATURE_EPOCHS = sorted(config["features"]["epochs"])
    if max(FEATURE_EPOCHS) > config["epochs"]:
        raise ValueError(
            f"config: features.epochs asks for epoch {max(FEATURE_EPOCHS)} but epochs is {config['epochs']}"
        )

# The mirror reaches the download job through the environment, not as a parameter: where verified zips came from
# is not part of what they are, so changing the mirror reruns nothing.
MIRROR_ENV = "METACOLLAPSE_OMNIGLOT_MIRROR"
os.environ.update({MIRROR_ENV: config["omniglot_mirror"] or os.environ.get(MIRROR_ENV, "")})


wildcard_constraints:
    run="|".join(re.escape(r) for r in RUNS),


# The package modules each stage runs: a change to one reruns that stage and what follows (a code parameter).
STAGE_CODE = {
    "prepare": ["data"],
    "train": ["training", "learners", "models", "episodes", "protonet", "checkpoints", "device", "evaluation", "runs"],
    "evaluate": ["evaluation", "learners", "models", "episodes", "protonet", "checkpoints", "device", "runs"],
    "probes": ["features", "episodes"],
    "features": ["features", "learners", "models", "protonet", "checkpoints", "device", "runs"],
    "nc": ["nc"],
    "aggregate": ["tables"],
    "figures": ["figures"],
}
PACKAGE = Path(workflow.basedir) / "src" / "metacollapse"  # a checkout; else the installed package
if PACKAGE.is_dir():
    # Rules run `python -m metacollapse`: from this checkout, also in an environment that lacks the package
    # (the per-rule conda environment ENV holds only its dependencies).
    os.environ.update({"PYTHONPATH": os.pathsep.join(filter(None, [str(PACKAGE.parent), os.getenv("PYTHONPATH")]))})
elif importlib.util.find_spec("metacollapse"):
    PACKAGE = Path(importlib.util.find_spec("metacollapse").origin).parent
ENV = "../envs/metacollapse.yaml"


def code(stage):
    digest = hashlib.sha256()
    for module in STAGE_CODE[stage]:
        path = PACKAGE / f"{module}.py"
        digest.update(path.read_bytes() if path.is_file() else b"")
    return digest.hexdigest()[:16]


def spec_json(wildcards):
    return json.dumps(RUNS[wildcards.run], sort_keys=True)


def compute_flags():
    return f"--device {config['device']} --precision {config['precision']}"


def processed(split):
    return f"data/processed/{split}.npy"


def probe_splits():
    return sorted({probe["split"] for probe in config["features"]["probes"].values()})


def run_files(pattern, runs=RUNS):
    return [pattern.format(run=run) for run in runs]


def epoch_files(folder, ext, epochs):
    return [f"results/{{run}}/{folder}/epoch_{e:03d}.{ext}" for e in epochs]


def cpu_plan():
    """The runs still to train, as JSON for `metacollapse estimate` (it warns when they would run on a CPU)."""
    todo = [spec for run, spec in RUNS.items() if not Path(f"results/{run}/train_log.csv").exists()]
    return json.dumps({"runs": todo, "device": config["device"], "precision": config["precision"]})
