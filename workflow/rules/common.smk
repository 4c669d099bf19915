# Shared by the rules: paths, datasets, the code digests and data versions that decide reruns, and the runtime
# token of the torch stages. Snakemake and the standard library only: the workflow parses and lints without the
# package, which runs inside the rules and once at the start (start.smk).
import ast
import functools
import hashlib
import importlib.util
import json
import os
import re
from pathlib import Path


def processed(split):
    return f"data/processed/{split}.npy"


def spec_json(wildcards):
    return json.dumps(RUNS[wildcards.run], sort_keys=True)


def run_priority(wildcards):
    """Conv-4 runs before the others (a ResNet-18 run trains for hours on a CPU), so the first results come early."""
    return 1 if RUNS[wildcards.run]["backbone"]["arch"] == "conv4" else 0


def run_files(pattern, runs=RUNS):
    return [pattern.format(run=run) for run in runs]


EPOCH_EXTENSIONS = {"checkpoints": "pt", "features": "npz", "nc": "csv"}


def epoch_files(kind, epochs, run="{run}"):
    """``results/{run}/{kind}/epoch_NNN.{ext}`` for each epoch: the one spelling of these paths in the workflow."""
    return [f"results/{run}/{kind}/epoch_{e:03d}.{EPOCH_EXTENSIONS[kind]}" for e in epochs]


# Figures are what has a caption; the report lists them with labels to filter by.
REPORT = Path(workflow.basedir) / "workflow" / "report"
FIGURES = sorted(p.stem for p in REPORT.glob("*.rst") if p.stem != "workflow")
DEFAULT_CONFIG = (Path(workflow.basedir) / "config" / "config.yaml").resolve()
STUDY = "+".join(Path(f).stem for f in workflow.configfiles if Path(f).resolve() != DEFAULT_CONFIG) or "config"


def figure_labels(name):
    """Labels from the caption: a metric against epoch is that metric; any other figure is its bold title."""
    caption = (REPORT / f"{name}.rst").read_text()
    if "against training epoch" in caption:
        return {"study": STUDY, "figure": name, "kind": "metric over epochs", "metric": name}
    title = re.match(r"\*\*(.+?)\*\*", caption)
    kind = title.group(1).rstrip(".:") if title else name
    return {"study": STUDY, "figure": name, "kind": kind, "metric": "several"}


def table(name):
    """An aggregated table, shown in the report with its labels."""
    return report(f"results/{name}.csv", category="Tables", labels={"study": STUDY, "table": name, "kind": "table"})


# Where each dataset comes from, and which of its splits the config uses.

DATASETS = {
    "omniglot": {
        "splits": ["train", "val", "trainval", "test"],
        "raw_dir": "data/raw",
        "raw": ["images_background.zip", "images_evaluation.zip"],
        "mirror": "omniglot_mirror",
        "command": "prepare",
    },
    "fashion": {
        "splits": ["fashion_train", "fashion_test"],
        "raw_dir": "data/raw/fashion",
        "raw": [
            "train-images-idx3-ubyte.gz",
            "train-labels-idx1-ubyte.gz",
            "t10k-images-idx3-ubyte.gz",
            "t10k-labels-idx1-ubyte.gz",
        ],
        "mirror": "fashion_mirror",
        "command": "prepare-fashion",
    },
}
SPLITS = DATASETS["omniglot"]["splits"]
SPLIT_LISTS = "data/splits/vinyals"  # Omniglot's class lists and their SHA256SUMS


def dataset_of(split):
    return next(name for name, dataset in DATASETS.items() if split in dataset["splits"])


def raw_files(dataset):
    return [f"{DATASETS[dataset]['raw_dir']}/{name}" for name in DATASETS[dataset]["raw"]]


def mirror_env(dataset):
    return f"METACOLLAPSE_{dataset.upper()}_MIRROR"


def manifest(dataset):
    """Size, mtime and sha256 of every file the dataset's prepare rule wrote (start.smk checks them)."""
    return f"data/processed/{dataset}_manifest.json"


def version_file(dataset):
    """The data version (data_version) of the files the dataset's prepare rule wrote."""
    return f"data/processed/{dataset}_version.txt"


def prepared_files(dataset):
    splits = DATASETS[dataset]["splits"]
    return [processed(s) for s in splits] + [f"data/processed/{s}_classes.txt" for s in splits]


# The far-domain protocol takes the keys it leaves out from the main one (metacollapse.evaluation).
EVALUATE_SPLITS = [
    config["evaluate"]["split"],
    *([config["evaluate"]["far"]["split"]] if "far" in config["evaluate"] else []),
]
FEATURE_LAYERS = (
    [config["features"]["layers"]] if config["features"]["layers"] == "all" else config["features"]["layers"]
)
PROBE_SPLITS = sorted({probe["split"] for probe in config["features"]["probes"].values()})
USED_SPLITS = {s for spec in RUNS.values() for s in (spec["train"]["split"], spec["val"]["split"])}
USED_SPLITS |= {*EVALUATE_SPLITS, *PROBE_SPLITS}
USED_DATASETS = sorted({dataset_of(split) for split in USED_SPLITS})

# Mirrors reach the download jobs through the environment, not as parameters: where verified files came from is
# not part of what they are, so changing a mirror reruns nothing.
os.environ.update(
    {mirror_env(d): config[spec["mirror"]] or os.environ.get(mirror_env(d), "") for d, spec in DATASETS.items()}
)


# A change to a package module reruns the stages that run it and what follows.

PACKAGE = Path(workflow.basedir) / "src" / "metacollapse"  # a checkout; else the installed package
if PACKAGE.is_dir():
    # Rules run `python -m metacollapse`: from this checkout, also in an environment that lacks the package
    # (the per-rule conda environment ENV holds only its dependencies).
    os.environ.update({"PYTHONPATH": os.pathsep.join(filter(None, [str(PACKAGE.parent), os.getenv("PYTHONPATH")]))})
elif importlib.util.find_spec("metacollapse"):
    PACKAGE = Path(importlib.util.find_spec("metacollapse").origin).parent
ENV = "../envs/metacollapse.yaml"


def module_file(dotted):
    """The file of a package module (``metacollapse.x``), or None for a name that is not one."""
    parts = dotted.split(".")
    if parts[0] != "metacollapse" or len(parts) < 2:
        return None
    path = PACKAGE.joinpath(*parts[1:])
    return next((p for p in (path.with_suffix(".py"), path / "__init__.py") if p.is_file()), None)


def imported_modules(tree):
    """The package modules a syntax tree imports, at any depth (imports inside functions included)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ("metacollapse" + (f".{node.module}" if node.module else "")) if node.level else node.module or ""
            names.update([base, *(f"{base}.{alias.name}" for alias in node.names)])
    return {name for name in names if module_file(name)}


@functools.cache
def module_imports(name):
    return imported_modules(ast.parse(module_file(name).read_bytes()))


@functools.cache
def code(*commands):
    """Digest of the package modules that the subcommands run: what their ``cmd_*`` functions in cli.py import,
    followed through every import of those modules (a rule parameter, so a change reruns the rule). cli.py itself
    only parses, so it is not part of it."""
    cli = PACKAGE / "cli.py"
    if not cli.is_file():
        return ""
    functions = {n.name: n for n in ast.parse(cli.read_bytes()).body if isinstance(n, ast.FunctionDef)}
    todo = set()
    for command in commands:  # a command cli.py lacks adds nothing (the job itself then fails, naming it)
        if f"cmd_{command.replace('-', '_')}" in functions:
            todo |= imported_modules(functions[f"cmd_{command.replace('-', '_')}"])
    seen = set()
    while todo:
        seen.add(name := todo.pop())
        todo |= module_imports(name) - seen
    digest = hashlib.sha256()
    for name in sorted(seen):
        digest.update(f"{name}\0".encode())
        digest.update(module_file(name).read_bytes())
    return digest.hexdigest()[:16]


@functools.cache
def data_version(dataset):
    """What a dataset's processed splits are a function of: its split lists (Omniglot's SHA256SUMS) and the code
    of its prepare stage. Written beside the data by prepare (version_file), and a parameter of every reader."""
    sums = Path(f"{SPLIT_LISTS}/SHA256SUMS").read_bytes() if dataset == "omniglot" else b""
    return hashlib.sha256(sums + code(DATASETS[dataset]["command"]).encode()).hexdigest()[:16]


def data_versions(splits):
    return {split: data_version(dataset_of(split)) for split in sorted(set(splits))}


def train_splits(wildcards):
    return [RUNS[wildcards.run]["train"]["split"], RUNS[wildcards.run]["val"]["split"]]


def recorded_version(dataset):
    path = Path(version_file(dataset))
    return path.read_text().strip() if path.is_file() else None


# Processed splits whose recorded data version is today's are `ancient` inputs of their readers: arrays made
# again with the same bytes (after damage, or by --forcerun prepare) retrain nothing. Otherwise they are plain
# inputs, so that a prepare that makes other data reruns every reader in the same run.
CURRENT_DATA = {d: recorded_version(d) == data_version(d) for d in USED_DATASETS}


def processed_inputs(splits):
    return [ancient(processed(s)) if CURRENT_DATA[dataset_of(s)] else processed(s) for s in sorted(set(splits))]
