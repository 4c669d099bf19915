"""The layouts of the pipeline's tables: every column and its kind, the key of each table, and how older tables
read. Producers write these columns; :func:`metacollapse.tables.read_table` checks and types them."""

from __future__ import annotations

import math
from typing import Any

from metacollapse.runs import RUN_COLUMNS

# Column kinds: "str" (non-empty text), "int" (required integer), "float" (empty or "nan" reads as NaN).
_RUN_KINDS: dict[str, str] = {c: {"width": "float", "seed": "int"}.get(c, "str") for c in RUN_COLUMNS}
SCHEMAS: dict[str, dict[str, str]] = {
    "train_log": {
        **_RUN_KINDS,
        "precision": "str",
        "n_params": "int",
        "dim": "int",
        "epoch": "int",
        "train_loss": "float",
        "train_acc": "float",
        "val_loss": "float",
        "val_acc": "float",
        "lr": "float",
        "seconds": "float",
        "steps_per_s": "float",
    },
    "fewshot": {
        **_RUN_KINDS,
        "split": "str",
        "n_way": "int",
        "n_shot": "int",
        "n_query": "int",
        "episodes": "int",
        "accuracy": "float",
        "ci95": "float",
    },
    "nc": {
        **_RUN_KINDS,
        "epoch": "int",
        "probe": "str",
        "bn_mode": "str",
        "layer": "str",
        "set": "str",
        "metric": "str",
        "mean": "float",
        "std": "float",
        "null": "float",
        "ci_low": "float",
        "ci_high": "float",
    },
    # One text column per key of the run spec, flattened with dots (write_runs_table), after these two.
    "runs": {"run": "str", "seed": "int"},
}
TRAIN_LOG_COLUMNS: tuple[str, ...] = tuple(SCHEMAS["train_log"])
FEWSHOT_COLUMNS: tuple[str, ...] = tuple(SCHEMAS["fewshot"])
NC_COLUMNS: tuple[str, ...] = tuple(SCHEMAS["nc"])

#: The columns that identify a row; aggregated tables are sorted by them.
KEYS: dict[str, tuple[str, ...]] = {
    "train_log": ("run", "epoch"),
    "fewshot": ("run", "split", "n_way", "n_shot"),
    "nc": ("run", "epoch", "probe", "bn_mode", "layer", "set", "metric"),
    "runs": ("run",),
}
#: Columns older tables lack, and what they read as.
LEGACY_DEFAULTS: dict[str, dict[str, Any]] = {
    "nc": {"layer": "embedding", "ci_low": math.nan, "ci_high": math.nan},
    "fewshot": {"split": "test"},
}
#: Columns renamed since (old name -> new name); committed tables keep their old headers.
LEGACY_NAMES: dict[str, dict[str, str]] = {"train_log": {"episodes_per_s": "steps_per_s"}}
#: The spec keys behind the run columns ``learner``, ``backbone`` and ``width`` (runs table column names).
