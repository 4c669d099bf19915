"""Before a workflow runs: check every run spec against the package's registries, resolve the runtime each run
would use on this machine, and name the raw files that no longer verify. The workflow calls this once at its start.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


def _hints(function: Callable) -> dict[str, Any]:
    try:
        return typing.get_type_hints(function)
    except (NameError, TypeError):  # an annotation this module cannot evaluate: the constructor checks that option
        return {}


def _accepts(hint: Any, value: Any) -> bool:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_accepts(h, value) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint in (int, float):  # YAML's true/false are no numbers; an integer is a fine float
        return isinstance(value, int if hint is int else (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return True  # other annotations (Any, tensors, ...): left to the constructor


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    names = {type(None): "null", bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(hint, str(hint))


def _option_problems(key: str, options: Mapping[str, Any], hints: Mapping[str, Any]) -> list[str]:
    return [
        f"{key}.{name} = {value!r}: expected {_describe(hints[name])}"
        for name, value in options.items()
        if name in hints and not _accepts(hints[name], value)
    ]


def check_learner_options(learner: Mapping[str, Any]) -> list[str]:
    """Problems of a run's ``learner`` section (name, option names and types, ``class_seed`` without ``classes``)
    found without building a network; an empty list when there are none. Value ranges are the constructor's."""
    from metacollapse.learners import LEARNERS, Learner, learner_options

    options = dict(learner)
    name = options.pop("name", None)
    if name not in LEARNERS:
        return [f"learner.name = {name!r}: unknown learner; expected one of {', '.join(sorted(LEARNERS))}"]
    cls = LEARNERS[name]
    allowed = learner_options(cls)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        return [f"learner.{key}: unknown option of {name!r}; allowed: {', '.join(sorted(allowed))}" for key in unknown]
    hints: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        if issubclass(klass, Learner) and "__init__" in vars(klass):
            hints.update({k: v for k, v in _hints(klass.__init__).items() if k in allowed})
    for option, default in allowed.items():  # no annotation: the default's type
        if option not in hints and default is not None and default is not inspect.Parameter.empty:
            hints[option] = type(default)
    problems = _option_problems("learner", options, hints)
    if "class_seed" in options and options.get("classes") is None:
        problems.append(
            f"learner.class_seed = {options['class_seed']!r} without learner.classes: class_seed only draws the "
            "class subset that classes asks for; set classes or drop class_seed"
        )
    return problems


def check_backbone_options(backbone: Mapping[str, Any]) -> list[str]:
    """Problems of a run's ``backbone`` section (arch, option names and types); an empty list when there are none."""
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
    return _option_problems("backbone", options, _hints(factory))


def resolve_runtime(device: str, precision: str, deterministic: bool) -> dict[str, Any]:
    """Device, precision and effective determinism a run gets here, and ``runtime``, the token that names them
    (e.g. ``cpu/bf16``, ``cuda:0/bf16/deterministic``): two settings with the same token give the same numbers.

    CPU runs are deterministic anyway, so ``deterministic`` only counts on CUDA. A CUDA index the machine lacks is
    a ValueError, as is ``cuda`` without any CUDA device.
    """
    import torch

    from metacollapse.device import resolve_device, resolve_precision

    where = resolve_device(device)
    if where.type == "cuda":
        count = torch.cuda.device_count()
        index = 0 if where.index is None else where.index  # plain "cuda" is the first device a process sees
        if index >= count:
            raise ValueError(
                f"device={device!r} was requested but this machine has {count} CUDA device(s)"
                + (f" (cuda:0 to cuda:{count - 1})" if count else "")
            )
        where = torch.device("cuda", index)
    resolved = resolve_precision(precision, where)
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
    problems = [
        f"run {name!r}: {problem}"
        for name, spec in runs.items()
        for problem in check_learner_options(spec["learner"]) + check_backbone_options(spec["backbone"])
    ]
    if problems:
        raise ValueError("\n".join(problems))
    device_error = None
    try:
        runtime = resolve_runtime(request["device"], request["precision"], request.get("deterministic", False))
    except (ValueError, RuntimeError) as error:
        if refuse_device:
            raise ValueError(str(error)) from error
        runtime, device_error = None, str(error)
    unverified, notes = unverified_raw_files(request.get("raw", []))
    return {
        "runs": {name: runtime for name in runs},
        "device_error": device_error,
        "unverified": unverified,
        "notes": notes,
    }
