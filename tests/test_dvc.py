"""DVC support without running the pipeline: dvc.yaml is current and matches the workflow, the metrics/plots
summary, and the re-hashing of checked-out outputs (on a small real DVC repository)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO, make_workspace, venv_env

from metacollapse import dvc

GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "metacollapse tests",
    "GIT_AUTHOR_EMAIL": "tests@metacollapse.invalid",
    "GIT_COMMITTER_NAME": "metacollapse tests",
    "GIT_COMMITTER_EMAIL": "tests@metacollapse.invalid",
}
DVC_FILES = ["dvc.yaml", ".dvc/config", ".dvc/.gitignore", ".dvcignore", ".gitignore", "results/README.md"]


def tool_env() -> dict[str, str]:
    """This interpreter's bin/ first on PATH (dvc, snakemake, metacollapse), no DVC analytics, a git identity."""
    return {**venv_env(), "DVC_NO_ANALYTICS": "1", **GIT_IDENTITY}


def run(cwd: Path, *command: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run a command of the venv (``dvc``, ``snakemake``, ``metacollapse``, ``git``) and show it on failure."""
    result = subprocess.run(
        list(command), cwd=cwd, env=tool_env(), capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} failed ({result.returncode}) in {cwd}:\n{result.stdout[-5000:]}\n"
            f"{result.stderr[-5000:]}"
        )
    return result


def snakemake_args(*args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", *args]


def dry_run_jobs(text: str) -> list[tuple[str, list[str], list[str]]]:
    """``(rule, inputs, outputs)`` of every job in the output of ``snakemake -n`` (jobs without files included)."""
    jobs = []
    for block in re.split(r"(?m)^(?:local)?rule ", text)[1:]:
        rule = block.split(":", 1)[0].strip()
        fields = dict(re.findall(r"(?m)^    (input|output): (.*)$", block))
        jobs.append((rule, *(fields.get(k, "").split(", ") if fields.get(k) else [] for k in ("input", "output"))))
    return jobs


def quick_config_text(mirror: Path | str) -> str:
    """config/quick.yaml with the mirror filled in: what the DVC workspaces of the tests use as config.yaml."""
    text = (REPO / "config" / "quick.yaml").read_text()
    text, n = re.subn(r"(?m)^omniglot_mirror:.*$", f"omniglot_mirror: {json.dumps(str(mirror))}", text)
    assert n == 1, "config/quick.yaml has no top-level omniglot_mirror line"
    return text


def make_dvc_workspace(root: Path, mirror: Path | str) -> Path:
    """A git repository holding the workflow and the DVC files, configured with the quick preset."""
    make_workspace(root)
    for name in DVC_FILES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, root / name)
    (root / "config" / "config.yaml").write_text(quick_config_text(mirror))
    run(root, "git", "init", "-q")
    run(root, "git", "add", "-A")
    run(root, "git", "commit", "-q", "-m", "workflow")
    return root


# ------------------------------------------------------------------------------------------------------------
# dvc.yaml
# ------------------------------------------------------------------------------------------------------------


def test_committed_dvc_yaml_is_generated_from_the_config():
    """The CI check: `metacollapse dvc-yaml --check` passes on the committed file (regenerate it otherwise)."""
    dvc.check_dvc_yaml(REPO / "dvc.yaml", REPO / "config" / "config.yaml")
    result = subprocess.run(
        [sys.executable, "-m", "metacollapse.cli", "dvc-yaml", "--check"],
        cwd=REPO,
        env=tool_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_stale_dvc_yaml_is_reported_with_a_diff(tmp_path):
    stale = tmp_path / "dvc.yaml"
    stale.write_text((REPO / "dvc.yaml").read_text().replace("train-conv4", "train-old"))
    with pytest.raises(dvc.DvcError, match=r"(?s)out of date.*train-old"):
        dvc.check_dvc_yaml(stale, REPO / "config" / "config.yaml")


def test_quick_preset_and_paper_protocol_share_one_dvc_yaml():
    paper = dvc.load_config(REPO / "config" / "config.yaml")
    quick = dvc.load_config(REPO / "config" / "quick.yaml")
    assert dvc.render_dvc_yaml(paper) == dvc.render_dvc_yaml(quick)
    # numbers do not matter, backbone names do
    changed = {**paper, "train": {**paper["train"], "epochs": 7}, "backbones": {"conv4": paper["backbones"]["conv4"]}}
    text = dvc.render_dvc_yaml(changed)
    assert "train-conv4" in text and "resnet18" not in text
    # a backbone set to null is dropped, as in the workflow
    assert dvc.render_dvc_yaml({**paper, "backbones": {**paper["backbones"], "resnet18": None}}) == text


def test_dvc_yaml_declares_what_the_issue_asks_for():
    document = yaml.safe_load((REPO / "dvc.yaml").read_text())
    stages = document["stages"]
    config = dvc.load_config(REPO / "config" / "config.yaml")
    outs = {}
    for name, stage in stages.items():
        assert stage["cmd"].startswith("snakemake "), name  # Snakemake computes, DVC only records
        for entry in stage.get("outs", []) + stage.get("metrics", []):
            path, options = next(iter(entry.items())) if isinstance(entry, dict) else (entry, {})
            outs[path] = (name, options)
        for params in stage.get("params", []):
            assert list(params) == ["config/config.yaml"], name
    for b in config["backbones"]:
        assert outs[f"results/{b}/checkpoints"] == (f"train-{b}", {"persist": True})
        assert f"results/{b}/features" in outs and f"results/{b}/train_state" not in outs
        assert "train" in stages[f"train-{b}"]["params"][0]["config/config.yaml"]
    for path in ("data/raw", "data/processed", "results/nc_metrics.csv", "results/figures"):
        assert path in outs
    assert outs["results/metrics.json"] == ("summary", {"cache": False})
    plot_ids = [next(iter(p)) for p in document["plots"]]
    assert "loss" in plot_ids and any(i.startswith("nc1-") for i in plot_ids)


def test_every_workflow_output_belongs_to_the_dvc_stage_that_runs_its_rule(tmp_path):
    """The outputs DVC declares are exactly what the workflow produces, stage by stage (Snakemake's dry run).

    Every job's output lies in an out of the stage whose --allowed-rules contain the job's rule, and every input
    is produced inside that stage or lies in one of its deps; every out and dep of every stage is used.
    """
    workdir = make_workspace(tmp_path / "ws")
    (workdir / "config" / "config.yaml").write_text(quick_config_text("/nonexistent"))
    jobs = dry_run_jobs(run(workdir, *snakemake_args("--cores", "1", "-n", "--forceall")).stdout)
    assert len(jobs) > 10
    stages = {s.name: s for s in dvc.pipeline_stages(dvc.load_config(workdir / "config" / "config.yaml"))}

    def inside(path: str, roots) -> str | None:
        return next((r for r in roots if path == r or path.startswith(r.rstrip("/") + "/")), None)

    used_outs, used_deps, rules_seen = set(), set(), set()
    produced_by = {}
    for rule, _, outputs in jobs:
        rules_seen.add(rule)
        for output in outputs:
            owners = [s for s in stages.values() if inside(output, s.out_paths)]
            assert len(owners) == 1, f"{output} ({rule}) is in the outs of {[s.name for s in owners]}"
            stage = owners[0]
            assert rule in stage.rules, f"{output} is made by {rule}, which stage {stage.name} may not run"
            used_outs.add((stage.name, inside(output, stage.out_paths)))
            produced_by[output] = stage.name
    for rule, inputs, outputs in jobs:
        if not outputs:
            continue
        stage = stages[produced_by[outputs[0]]]
        for path in inputs:
            if produced_by.get(path) == stage.name:
                continue
            dep = inside(path, stage.deps)
            assert dep, f"{path} (input of {rule} -> {outputs[0]}) is not a dep of stage {stage.name}"
            used_deps.add((stage.name, dep))
    listed = run(workdir, *snakemake_args("--list-rules")).stdout.split()
    allowed = {rule for s in stages.values() for rule in s.rules}
    assert set(listed) - {"all"} <= allowed, "a rule that no DVC stage runs"
    assert rules_seen - {"all"} <= allowed
    for stage in stages.values():
        for path in stage.out_paths:
            assert (stage.name, path) in used_outs, f"out {path} of {stage.name} holds no workflow output"
        for path in stage.deps:
            assert (stage.name, path) in used_deps, f"dep {path} of {stage.name} is not an input of its jobs"


# ------------------------------------------------------------------------------------------------------------
# metrics and plots summary
# ------------------------------------------------------------------------------------------------------------


def synthetic_tables():
    rows = []
    for backbone in ("conv4", "resnet18"):
        for epoch in (1, 2):
            for probe, set_, metric, value in [
                ("train_classes", "all", "nc1", 1.0 / epoch),
                ("train_classes", "protonet", "nc3", 0.123456789),
                ("val_episodes", "query", "nc1", math.nan),
                ("val_episodes", "support", "nc1", 2.0),
            ]:
                rows.append((backbone, epoch, probe, set_, metric, value, 0.0))
    nc = pd.DataFrame(rows, columns=["backbone", "epoch", "probe", "set", "metric", "mean", "std"])
    fewshot = pd.DataFrame(
        [("conv4", 5, 1, 15, 100, 0.91234567, 0.01), ("resnet18", 5, 1, 15, 100, 0.95, 0.02)],
        columns=["backbone", "n_way", "n_shot", "n_query", "episodes", "accuracy", "ci95"],
    )
    log = pd.DataFrame(
        {"epoch": [1, 2], "train_loss": [1.0, 0.5], "train_acc": [0.5, 0.75], "val_loss": [1.2, 0.7]}
        | {"val_acc": [0.4, 0.7], "lr": [1e-3, 1e-3], "seconds": [3.0, 2.0], "episodes_per_s": [9.0, 9.5]}
    )
    return nc, fewshot, log


def test_summary_holds_final_nc_per_probe_fewshot_and_training(tmp_path):
    nc, fewshot, log = synthetic_tables()
    paths = {"nc": tmp_path / "nc_metrics.csv", "fewshot": [], "logs": []}
    nc.to_csv(paths["nc"], index=False)
    for b in ("conv4", "resnet18"):
        (tmp_path / b).mkdir()
        fewshot[fewshot.backbone == b].to_csv(tmp_path / b / "fewshot_accuracy.csv", index=False)
        log.to_csv(tmp_path / b / "train_log.csv", index=False)
        paths["fewshot"].append(tmp_path / b / "fewshot_accuracy.csv")
        paths["logs"].append(tmp_path / b / "train_log.csv")
    metrics, plots = tmp_path / "metrics.json", tmp_path / "plots"
    written = dvc.write_metrics_summary(paths["nc"], paths["fewshot"], paths["logs"], metrics, plots)
    assert written == [metrics, plots / "nc_conv4.csv", plots / "nc_resnet18.csv"]

    summary = json.loads(metrics.read_text())
    conv4 = summary["conv4"]
    assert conv4["nc"]["epoch"] == 2
    assert conv4["nc"]["train_classes"]["all"]["nc1"] == 0.5
    assert conv4["nc"]["train_classes"]["protonet"]["nc3"] == 0.123457  # 6 significant digits
    assert conv4["nc"]["val_episodes"]["query"]["nc1"] is None  # NaN is not valid JSON
    assert conv4["fewshot"]["5way_1shot"] == {"accuracy": 0.912346, "ci95": 0.01}
    assert conv4["epochs"] == 2
    assert conv4["train"] == {"train_loss": 0.5, "train_acc": 0.75, "val_loss": 0.7, "val_acc": 0.7}
    assert "seconds" not in json.dumps(summary)  # timings are not reproducible

    table = pd.read_csv(plots / "nc_conv4.csv")
    assert list(table.columns) == [
        "epoch",
        "train_classes/all/nc1",
        "train_classes/protonet/nc3",
        "val_episodes/query/nc1",
        "val_episodes/support/nc1",
    ]
    assert table["epoch"].tolist() == [1, 2] and table["train_classes/all/nc1"].tolist() == [1.0, 0.5]

    # deterministic bytes: the summary is a pure function of the tables
    before = [p.read_bytes() for p in written]
    dvc.write_metrics_summary(paths["nc"], paths["fewshot"], paths["logs"], metrics, plots)
    assert before == [p.read_bytes() for p in written]


def test_plot_definitions_use_one_set_per_probe_and_one_file_per_backbone():
    config = dvc.load_config(REPO / "config" / "config.yaml")
    plots = {next(iter(p)): next(iter(p.values())) for p in dvc.plot_definitions(config)}
    nc1 = plots["nc1-conv4"]
    assert nc1["x"] == "epoch"
    assert nc1["y"] == {
        "results/plots/nc_conv4.csv": [
            "train_episodes/query/nc1",
            "val_episodes/query/nc1",
            "train_classes/all/nc1",
            "test_classes/all/nc1",
        ]
    }
    assert plots["nc4-resnet18"]["y"]["results/plots/nc_resnet18.csv"][0] == "train_episodes/protonet/nc4"
    assert set(plots["loss"]["y"]) == {f"results/{b}/train_log.csv" for b in config["backbones"]}


# ------------------------------------------------------------------------------------------------------------
# verification of checked-out outputs (a small real DVC repository)
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture
def toy_dvc_repo(tmp_path) -> Path:
    root = tmp_path / "toy"
    root.mkdir()
    run(root, "git", "init", "-q")
    run(root, sys.executable, "-m", "dvc", "init", "-q")
    (root / "dvc.yaml").write_text(
        "stages:\n"
        "  make:\n"
        "    cmd: mkdir -p out && echo one > out/a.txt && echo two > out/b.txt && echo three > single.txt\n"
        "    outs:\n    - out\n    - single.txt\n"
    )
    run(root, sys.executable, "-m", "dvc", "repro", "-q")
    return root


def corrupt(path: Path) -> None:
    """Flip the first byte in place (same size), as a bad disk or a half-finished copy would."""
    mode = path.stat().st_mode
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF
    path.write_bytes(bytes(data))
    os.chmod(path, mode)


def test_dir_md5_matches_dvc(toy_dvc_repo):
    lock = yaml.safe_load((toy_dvc_repo / "dvc.lock").read_text())
    out = next(o for o in lock["stages"]["make"]["outs"] if o["path"] == "out")
    entries = [(name, dvc.md5_file(toy_dvc_repo / "out" / name)) for name in ("b.txt", "a.txt")]
    assert dvc.dir_md5(entries) == out["md5"]


def test_verify_tells_a_corrupted_cache_object_from_a_local_edit(toy_dvc_repo):
    root = toy_dvc_repo
    assert dvc.verify_outputs(root) == []
    cache = root / ".dvc" / "cache"

    # A corrupted cache object is what `dvc checkout` (and so `dvc pull`) silently restores.
    obj = cache / "files" / "md5" / dvc.md5_file(root / "out" / "a.txt")[:2] / dvc.md5_file(root / "out" / "a.txt")[2:]
    corrupt(obj)
    (root / "out" / "a.txt").unlink()
    run(root, sys.executable, "-m", "dvc", "checkout", "-q")
    problems = dvc.verify_outputs(root)
    assert [p.path for p in problems] == ["out"]
    assert "a.txt differs" in problems[0].reason and problems[0].corrupted_cache == [str(obj)]

    # --repair deletes the bad object and the file made from it
    assert str(obj) in dvc.repair(root)
    assert not obj.exists() and not (root / "out").exists()

    # a local edit of a single-file output: reported, the cache is fine
    (root / "single.txt").write_text("edited\n")
    problems = dvc.verify_outputs(root)
    assert [p.path for p in problems] == ["single.txt"] and problems[0].corrupted_cache == []
    with pytest.raises(dvc.DvcError, match="single.txt.*\n.*differs from dvc.lock"):
        dvc.settle(root)
