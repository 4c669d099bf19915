"""Before a workflow runs: check every run spec against the package's registries, resolve the runtime each run
would use on this machine, and name the raw files that no longer verify. The workflow calls this once at its start.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


def _hints(function: Callable) -> dict[str, Any]:
    try:
        return typing.get_type_hints(function)
    except (NameError, TypeError):  # an annotation this module cannot evaluate: the factory checks that option
        return {}


def check_backbone_options(backbone: Mapping[str, Any]) -> list[str]:
    """Problems of a run's ``backbone`` section (arch, option names and types); an empty list when there are none."""
    from metacollapse.learners import accepts, type_name
    from metacollapse.models import BACKBONES

    options = dict(backbone)
    arch = options.pop("arch", None)
    if arch not in BACKBONES:
        return [f"backbone.arch = {arch!r}: unknown backbone; expected one of {', '.join(sorted(BACKBONES))}"]
    factory = BACKBONES[arch]
    allowed = [
        p.name
        for p in inspect.signature(factory).parameters.values()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        return [f"backbone.{key}: unknown option of {arch!r}; allowed: {', '.join(allowed)}" for key in unknown]
    hints = _hints(factory)
    return [
        f"backbone.{name} = {value!r}: expected {type_name(hints[name])}"
        for name, value in options.items()
        if name in hints and not accepts(value, hints[name])
    ]


def resolve_runtime(device: str, precision: str, deterministic: bool, arch: str | None = None) -> dict[str, Any]:
    """Device, precision (``auto`` as :func:`metacollapse.device.auto_precision` picks it for ``arch``) and
    effective determinism a run gets here, and ``runtime``, the token that names them (e.g. ``cpu/bf16``,
    ``cuda:0/bf16/deterministic``): two settings with the same token give the same numbers.

    CPU runs are deterministic anyway, so ``deterministic`` only counts on CUDA. A CUDA device the machine lacks is
    an error (:func:`metacollapse.device.resolve_device`).
    """
    import torch

    from metacollapse.device import resolve_device, resolve_precision

    where = resolve_device(device)
    if where.type == "cuda" and where.index is None:
        where = torch.device("cuda", 0)  # plain "cuda" is the first device a process sees
    resolved = resolve_precision(precision, where, arch)
    exact = bool(deterministic) and where.type == "cuda"
    token = "/".join([str(where), resolved, *(["deterministic"] if exact else [])])
    return {"device": str(where), "precision": resolved, "deterministic": exact, "runtime": token}


def unverified_raw_files(raw: list[Mapping[str, Any]]) -> tuple[list[str], list[str]]:
    """Files in each ``{"dataset", "dir", "mirror"}`` raw folder that do not verify against the configured source,
    and notes on the folders that could not be checked (the source unreachable, or no checker in this package)."""
    try:
        from metacollapse.download import unverified_files
    except ImportError as error:
        return [], [f"raw files not checked: {error}"] if raw else []
    files: list[str] = []
    notes: list[str] = []
    for entry in raw:
        try:
            found = unverified_files(Path(entry["dir"]), entry.get("mirror") or None, entry["dataset"])
        except (ValueError, OSError) as error:
            notes.append(f"{entry['dir']}: not checked ({error})")
            continue
        files += [str(path) for path in found]
    return files, notes


def plan(request: Mapping[str, Any], refuse_device: bool = True) -> dict[str, Any]:
    """Check ``request`` (``{"runs": {name: run spec}, "device", "precision", "deterministic", "raw": [...]}``) and
    return ``{"runs": {name: runtime}, "device_error", "unverified", "notes"}``.

    A problem in a run spec is a ValueError with one line per problem, each naming the run. A device this machine
    lacks is one too, unless ``refuse_device`` is false: then it is ``device_error`` and every runtime is None.
    """
    runs = request["runs"]
    from metacollapse.learners import learner_problems

    problems = [
        f"run {name!r}: {problem}"
        for name, spec in runs.items()
        for problem in learner_problems(spec["learner"]) + check_backbone_options(spec["backbone"])
    ]
    if problems:
        raise ValueError("\n".join(problems))
    device_error, settings = None, (request["device"], request["precision"], request.get("deterministic", False))
    try:
        runtimes = {name: resolve_runtime(*settings, spec["backbone"].get("arch")) for name, spec in runs.items()}
    except (ValueError, RuntimeError) as error:
        if refuse_device:
            raise ValueError(str(error)) from error
        runtimes, device_error = dict.fromkeys(runs), str(error)
    unverified, notes = unverified_raw_files(request.get("raw", []))
    return {
        "runs": runtimes,
        "device_error": device_error,
        "unverified": unverified,
        "notes": notes,
    }
