"""`metacollapse plan`: the package's checks of every run spec and the runtime each run gets on this machine."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from metacollapse.learners import learner_problems
from metacollapse.plan import check_backbone_options, plan, resolve_runtime

CONV4 = {"arch": "conv4", "width": 16}


def request(*runs: tuple[str, dict], device: str = "cpu", deterministic: bool = False) -> dict:
    specs = {name: {"learner": learner, "backbone": CONV4} for name, learner in runs}
    return {"runs": specs, "device": device, "precision": "fp32", "deterministic": deterministic}


def run_plan(payload: dict, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "metacollapse", "plan", *args]
    return subprocess.run(command, input=json.dumps(payload), capture_output=True, text=True)


def test_learner_options_of_the_wrong_type_are_named_with_what_is_expected():
    problems = learner_problems({"name": "maml", "inner_lr": "x", "inner_steps": 1.5, "first_order": 1})
    assert problems == [
        "learner.inner_lr = 'x': expected a number",
        "learner.inner_steps = 1.5: expected an integer",
        "learner.first_order = 1: expected true or false",
    ]
    assert learner_problems({"name": "protonet", "classes": "5", "class_seed": 1}) == [
        "learner.classes = '5': expected an integer or null"
    ]


def test_an_integer_is_a_fine_number_but_true_is_not():
    assert learner_problems({"name": "maml", "inner_lr": 1}) == []
    assert learner_problems({"name": "maml", "inner_lr": True}) == ["learner.inner_lr = True: expected a number"]


def test_class_seed_without_classes_is_refused_and_with_classes_accepted():
    (problem,) = learner_problems({"name": "protonet", "class_seed": 5})
    assert problem.startswith("learner.class_seed = 5 without learner.classes")
    assert learner_problems({"name": "protonet", "classes": 60, "class_seed": 5}) == []


def test_unknown_learners_and_options_name_what_is_allowed():
    (problem,) = learner_problems({"name": "reptile"})
    assert problem.startswith("learner.name = 'reptile': unknown learner; expected one of ") and "protonet" in problem
    (problem,) = learner_problems({"name": "protonet", "inner_lr": 0.1})
    assert problem == "learner.inner_lr: unknown option of 'protonet'; allowed: class_seed, classes"


def test_backbone_names_options_and_types_are_checked_against_the_registry():
    assert check_backbone_options({"arch": "conv4", "width": 64}) == []
    assert check_backbone_options({"arch": "conv4", "width": "big"}) == ["backbone.width = 'big': expected an integer"]
    (problem,) = check_backbone_options({"arch": "conv4", "widht": 16})
    assert problem.startswith("backbone.widht: unknown option of 'conv4'; allowed: width, depth")
    (problem,) = check_backbone_options({"arch": "vit"})
    assert problem.startswith("backbone.arch = 'vit': unknown backbone; expected one of conv4, resnet18")


def test_every_problem_of_every_run_is_one_line_naming_the_run():
    with pytest.raises(ValueError) as caught:
        plan(request(("a", {"name": "maml", "inner_lr": "x"}), ("b", {"name": "protonet", "class_seed": 1})))
    lines = str(caught.value).splitlines()
    assert len(lines) == 2 and lines[0].startswith("run 'a': learner.inner_lr") and lines[1].startswith("run 'b': ")


def test_on_a_cpu_determinism_is_implicit_so_it_does_not_change_the_runtime():
    assert resolve_runtime("cpu", "fp32", deterministic=True) == {
        "device": "cpu",
        "precision": "fp32",
        "deterministic": False,
        "runtime": "cpu/fp32",
    }
    assert resolve_runtime("cpu", "bf16", False)["runtime"] == "cpu/bf16"


def test_auto_resolves_to_the_device_this_machine_has():
    expected = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert resolve_runtime("auto", "fp32", False)["device"] == expected


def test_a_cuda_index_beyond_the_machine_is_refused_in_one_line():
    with pytest.raises((ValueError, RuntimeError)) as caught:
        resolve_runtime(f"cuda:{torch.cuda.device_count()}", "auto", False)
    assert f"cuda:{torch.cuda.device_count()}" in str(caught.value) and "\n" not in str(caught.value)


def test_the_command_prints_each_run_s_runtime_as_json():
    result = run_plan(request(("a", {"name": "protonet"}), ("b", {"name": "maml", "inner_steps": 1})))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["runs"] == {name: resolve_runtime("cpu", "fp32", False) for name in ("a", "b")}
    assert out["device_error"] is None and out["unverified"] == []


def test_the_command_refuses_bad_specs_with_one_line_each_and_no_traceback():
    result = run_plan(request(("a", {"name": "maml", "inner_lr": "x"}), ("b", {"name": "reptile"})))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        "metacollapse plan: error: run 'a': learner.inner_lr = 'x': expected a number",
        f"metacollapse plan: error: run 'b': {learner_problems({'name': 'reptile'})[0]}",
    ]


def test_a_missing_device_is_refused_or_reported_as_asked():
    missing = f"cuda:{torch.cuda.device_count()}"
    refused = run_plan(request(("a", {"name": "protonet"}), device=missing))
    assert refused.returncode == 2 and len(refused.stderr.splitlines()) == 1 and missing in refused.stderr
    reported = run_plan(request(("a", {"name": "protonet"}), device=missing), "--report-device-error")
    out = json.loads(reported.stdout)
    assert reported.returncode == 0 and missing in out["device_error"] and out["runs"] == {"a": None}
