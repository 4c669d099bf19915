"""Before a workflow runs on a CPU: how long would the runs still to train take here?

The workflow's ``onstart`` hands this the runs it has yet to train (``METACOLLAPSE_PLAN``). On a GPU it says
nothing. On a CPU, when the plan is more than a few minutes of work, it times a few training steps of each
distinct backbone and episode shape on random images (a ProtoNet step: the learners cost about the same per
episode, except MAML's inner loop), set up as the stages run (:func:`metacollapse.device.setup`), within a time
budget, and prints the estimate with the CPU presets. It never refuses to run.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import torch

from metacollapse.device import Runtime, prepare_model, resolve_precision, setup, to_input
from metacollapse.models import build_backbone
from metacollapse.protonet import episode_loss

log = logging.getLogger(__name__)

#: Below this many training steps in total the plan is not timed (a smoke preset).
QUIET_BELOW_STEPS = 1000
CPU_PRESETS = "config/quick.yaml (minutes), config/studies/*.yaml but full_* (an hour or two each)"


def seconds_per_step(
    backbone: Mapping[str, Any], n_way: int, shots: int, runtime: Runtime, most: int = 12, budget_s: float = 60.0
) -> float:
    """Seconds of one ProtoNet training step on random images, once two steps in a row agree within 15%.

    The first steps of a shape are slow (oneDNN builds its bf16 kernels then), so a fixed warm-up would not do;
    after ``budget_s`` seconds the last step timed is taken as it is.
    """
    torch.manual_seed(0)
    precision = runtime.precision
    model = prepare_model(build_backbone(backbone), runtime.device, precision)
    optimizer = torch.optim.Adam(model.parameters())
    images = to_input((torch.rand(n_way * shots, 1, 28, 28) < 0.2).float(), precision)
    n_support = max(1, shots // 2)
    timings: list[float] = []
    started = time.perf_counter()
    while len(timings) < most and not (len(timings) >= 3 and abs(timings[-1] - timings[-2]) < 0.15 * timings[-1]):
        if timings and time.perf_counter() - started > budget_s:
            break
        began = time.perf_counter()
        with runtime.autocast():
            embedded = model(images).float().reshape(n_way, shots, -1)
        support = embedded[:, :n_support].reshape(-1, embedded.shape[-1])
        query = embedded[:, n_support:].reshape(-1, embedded.shape[-1])
        loss, _ = episode_loss(support, query, n_way)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        timings.append(time.perf_counter() - began)
    return min(timings[-2:])


def estimate(plan: Mapping[str, Any], budget_s: float = 120.0) -> str | None:
    """The warning for ``plan`` (``{"runs": [run spec, ...], "device", "precision"}``); None on a GPU or small plan.

    Timing stops after about ``budget_s`` seconds in all (each shape gets an equal share).
    """
    runtime = setup(plan["device"], "fp32")
    if runtime.device.type != "cpu" or not plan["runs"]:
        return None
    shapes: dict[str, dict[str, Any]] = {}
    for spec in plan["runs"]:
        train = spec["train"]
        steps = int(train["epochs"]) * int(train["steps_per_epoch"]) * int(train.get("meta_batch", 1))
        key = json.dumps([spec["backbone"], train["n_way"], train["n_support"] + train["n_query"]], sort_keys=True)
        shapes.setdefault(key, {"spec": spec, "steps": 0})["steps"] += steps
    total_steps = sum(s["steps"] for s in shapes.values())
    if total_steps < QUIET_BELOW_STEPS:
        return None
    seconds, lines, precisions = 0.0, [], set()
    for shape in shapes.values():
        spec, train = shape["spec"], shape["spec"]["train"]
        shape_runtime = Runtime(
            runtime.device, resolve_precision(plan["precision"], runtime.device, spec["backbone"]["arch"])
        )
        precisions.add(shape_runtime.precision)
        per_step = seconds_per_step(
            spec["backbone"],
            int(train["n_way"]),
            train["n_support"] + train["n_query"],
            shape_runtime,
            budget_s=budget_s / len(shapes),
        )
        seconds += per_step * shape["steps"]
        lines.append(f"  {spec['backbone']} {train['n_way']}-way: {1 / per_step:.2f} steps/s x {shape['steps']} steps")
    return (
        f"This workflow will train {len(plan['runs'])} run(s) on the CPU ({', '.join(sorted(precisions))}): "
        f"{total_steps} steps, about {seconds / 3600:.1f} hours of training measured on this machine just now, "
        "before evaluation and feature dumps:\n"
        + "\n".join(lines)
        + f"\nOn a CPU, consider the presets {CPU_PRESETS}. "
        "Continuing."
    )
