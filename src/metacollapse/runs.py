"""A run: one named training configuration, and the columns that identify it in every table.

The workflow expands ``runs`` and ``sweeps`` of the config into run specs (``workflow/rules/common.smk``) and hands
each stage its run's spec as JSON::

    {"name": "conv4", "learner": {"name": "protonet", ...}, "backbone": {"arch": "conv4", "width": 64},
     "seed": 0, "train": {...}, "val": {...}}

Every table the pipeline writes (training log, few-shot accuracy, NC table) starts with :data:`RUN_COLUMNS`, so
figures can group by any of them and average over seeds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

RUN_COLUMNS: tuple[str, ...] = ("run", "learner", "backbone", "width", "seed")
SPEC_KEYS: tuple[str, ...] = ("name", "learner", "backbone", "seed", "train", "val")


def check_spec(spec: Mapping[str, Any], where: str = "run spec") -> dict[str, Any]:
    """The spec as a plain dict, or a ValueError naming the missing keys."""
    missing = [key for key in SPEC_KEYS if key not in spec]
    if missing:
        raise ValueError(f"{where}: missing keys {missing}; got {sorted(spec)}")
    return json.loads(json.dumps(dict(spec)))


def run_columns(spec: Mapping[str, Any]) -> dict[str, Any]:
    """``run, learner, backbone, width, seed`` of a run spec; ``width`` is NaN for backbones without one."""
    backbone = spec["backbone"]
    return {
        "run": spec["name"],
        "learner": spec["learner"]["name"],
        "backbone": backbone["arch"],
        "width": backbone.get("width", math.nan),
        "seed": int(spec["seed"]),
    }


def spec_difference(expected: Mapping[str, Any], found: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Human-readable list of the keys where two (nested) specs differ, e.g. ``backbone.arch: 'conv4' != ...``."""
    out: list[str] = []
    for key in sorted(set(expected) | set(found)):
        a, b = expected.get(key, "<absent>"), found.get(key, "<absent>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += spec_difference(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: expected {a!r}, found {b!r}")
    return out
