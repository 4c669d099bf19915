"""DVC on the real quick pipeline: push from one clone, pull into a fresh one, corruption, reruns, param changes.

One pipeline run per test session: clone A takes the outputs of the session's ``quick_run`` (conftest; without it,
A runs the quick preset itself), records them with ``dvc commit`` and pushes them to a local remote. Clone B is a
fresh ``git clone`` of A that pulls with ``metacollapse dvc-pull``. The tests of this module share A and B and run
in file order; the ones that change a clone come last and put back what they change where they can.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from test_dvc import corrupt, dry_run_jobs, make_dvc_workspace, run, snakemake_args

from metacollapse import dvc

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Origin:
    root: Path
    a: Path
    remote: Path


def dvc_cmd(cwd: Path, *args: str, check: bool = True):
    return run(cwd, sys.executable, "-m", "dvc", *args, check=check)


def metacollapse(cwd: Path, *args: str, check: bool = True):
    return run(cwd, sys.executable, "-m", "metacollapse.cli", *args, check=check)


def snakemake(cwd: Path, *args: str, check: bool = True):
    return run(cwd, *snakemake_args(*args), check=check)


def nothing_to_do(cwd: Path) -> bool:
    result = snakemake(cwd, "--cores", "2", "-n")
    return "Nothing to be done" in result.stdout + result.stderr


def status(cwd: Path) -> dict:
    return json.loads(dvc_cmd(cwd, "status", "--json").stdout or "{}")


def lock_md5(cwd: Path, path: str) -> str:
    return next(o.md5 for o in dvc.locked_outputs(cwd) if o.path == path)


def cache_object(root: Path, md5: str) -> Path:
    return root / "files" / "md5" / md5[:2] / md5[2:]


def file_tree(root: Path, *dirs: str) -> dict[str, int]:
    """Relative path -> mtime_ns of every file under ``dirs``."""
    return {
        p.relative_to(root).as_posix(): p.stat().st_mtime_ns
        for d in dirs
        for p in sorted((root / d).rglob("*"))
        if p.is_file()
    }


def fresh_clone(origin: Origin, name: str) -> Path:
    clone = origin.root / name
    run(origin.root, "git", "clone", "-q", str(origin.a), str(clone))
    # The default remote in .dvc/config is a folder in the home directory; each test machine gets its own.
    dvc_cmd(clone, "remote", "modify", "--local", "storage", "url", str(origin.remote))
    return clone


@pytest.fixture(scope="module")
def origin(request, tmp_path_factory, omniglot_mirror) -> Origin:
    """Clone A: the quick pipeline's outputs recorded by DVC (`dvc commit`), committed to git, pushed."""
    root = tmp_path_factory.mktemp("dvc")
    a = make_dvc_workspace(root / "A", omniglot_mirror)
    ignored = run(a, "git", "check-ignore", "results/metrics.json", "results/plots/nc_conv4.csv", check=False)
    assert ignored.returncode == 1, (
        f".gitignore ignores the DVC metrics/plots, which live in git (cache: false): {ignored.stdout}"
        "\nadd `!/results/metrics.json` and `!/results/plots/` after `/results/*`"
    )
    try:
        source = request.getfixturevalue("quick_run")
    except pytest.FixtureLookupError:
        source = None
    if source is not None:  # reuse the session's pipeline run (copies: the tests below change files)
        for name in ("data/raw", "data/processed"):
            shutil.copytree(source / name, a / name)
        for path in (source / "results").iterdir():
            if path.is_file() and path.name != "README.md":
                shutil.copy2(path, a / "results" / path.name)
            elif path.is_dir():  # the resume state only where a test resumes: it is not a DVC output
                skip = () if path.name == "conv4" else ("train_state",)
                shutil.copytree(path, a / "results" / path.name, ignore=shutil.ignore_patterns(*skip))
    snakemake(a, "--cores", "2")  # whatever the session run lacks (everything when there is none)
    remote = root / "remote"
    dvc_cmd(a, "remote", "modify", "--local", "storage", "url", str(remote))
    dvc_cmd(a, "commit", "--force")
    metacollapse(a, "dvc-settle")
    run(a, "git", "add", "-A")
    run(a, "git", "commit", "-q", "-m", "quick run")
    dvc_cmd(a, "push")
    return Origin(root, a, remote)


@pytest.fixture(scope="module")
def clone_b(origin) -> Path:
    """Clone B: a fresh git clone of A; `metacollapse dvc-pull` = dvc pull + verify + Snakemake touch."""
    b = fresh_clone(origin, "B")
    assert not (b / "results" / "nc_metrics.csv").exists() and not (b / ".snakemake").exists()
    metacollapse(b, "dvc-pull")
    return b


def test_clone_a_is_recorded_and_up_to_date_for_both_tools(origin):
    a = origin.a
    assert status(a) == {}
    assert nothing_to_do(a)
    repro = dvc_cmd(a, "repro")
    assert "Running stage" not in repro.stdout + repro.stderr
    assert (origin.remote / "files" / "md5").is_dir()
    tracked = run(a, "git", "ls-files").stdout.split()
    assert {"dvc.lock", "results/metrics.json", "results/plots/nc_conv4.csv"} <= set(tracked)
    assert not any(p.startswith(("results/conv4/", "data/raw/", "data/processed/")) for p in tracked)


def test_fresh_clone_after_dvc_pull_has_nothing_to_do(origin, clone_b):
    assert nothing_to_do(clone_b)
    assert status(clone_b) == {}
    assert status(origin.a) == {}
    # every pipeline output came back, byte for byte
    assert dvc.verify_outputs(clone_b) == []
    assert (
        file_tree(origin.a, "data/raw", "data/processed").keys()
        == file_tree(clone_b, "data/raw", "data/processed").keys()
    )
    # the resume state is local to the clone that trained: not a DVC output
    assert not (clone_b / "results" / "conv4" / "train_state").exists()


def test_forced_figures_in_the_clone_are_byte_identical_to_the_origin(origin, clone_b):
    figures = clone_b / "results" / "figures"
    before = file_tree(clone_b, "results/figures")
    snakemake(clone_b, "--cores", "1", "--forcerun", "figures")
    after = file_tree(clone_b, "results/figures")
    assert after.keys() == before.keys() and all(after[k] != before[k] for k in after), "figures not redrawn"
    for name in after:
        assert (clone_b / name).read_bytes() == (origin.a / name).read_bytes(), name
    assert len(list(figures.glob("*.png"))) >= 12
    assert status(clone_b) == {}
    assert nothing_to_do(clone_b)


def test_dvc_metrics_and_plots_read_the_summary(origin, clone_b):
    config = yaml.safe_load((clone_b / "config" / "config.yaml").read_text())
    shown = json.loads(dvc_cmd(clone_b, "metrics", "show", "--json").stdout)
    metrics = next(iter(shown.values()))["data"]["results/metrics.json"]["data"]
    assert set(metrics) == set(config["backbones"])
    for entry in metrics.values():
        assert entry["nc"]["epoch"] == config["train"]["epochs"]
        assert set(entry["nc"]) - {"epoch"} == set(config["features"]["probes"])
        assert len(entry["fewshot"]) == len(config["evaluate"]["settings"])
        assert 0 <= entry["fewshot"]["5way_5shot"]["accuracy"] <= 1
    assert json.loads(dvc_cmd(clone_b, "metrics", "diff", "--json").stdout or "{}") == {}

    plots = json.loads(dvc_cmd(clone_b, "plots", "show", "--json").stdout)
    assert not plots.get("errors"), plots.get("errors")
    document = yaml.safe_load((clone_b / "dvc.yaml").read_text())
    for definition in document["plots"]:
        plot_id, spec = next(iter(definition.items()))
        rendered = plots["data"][plot_id]
        values = rendered[0]["content"]["data"]["values"]
        # DVC labels a series "file::column" when a plot reads several files, just "column" for one file
        labels = {(v.get("filename::field") or v["field"]).split("::")[-1] for v in values}
        columns = {c for cs in spec["y"].values() for c in cs}
        assert labels == columns, plot_id
        series = sum(len(cs) for cs in spec["y"].values())
        assert len(values) == series * config["train"]["epochs"], plot_id


def test_every_stage_command_plans_only_its_own_rules_and_outputs(origin):
    document = yaml.safe_load((origin.a / "dvc.yaml").read_text())
    for name, stage in document["stages"].items():
        command = stage["cmd"].split()
        assert command[0] == "snakemake", name
        result = run(origin.a, *snakemake_args("-n", "--forceall", *command[1:]))
        jobs = dry_run_jobs(result.stdout)
        declared = [
            next(iter(o)) if isinstance(o, dict) else o for o in stage.get("outs", []) + stage.get("metrics", [])
        ]
        allowed = command[command.index("--allowed-rules") + 1 :]
        assert {rule for rule, _, _ in jobs} <= set(allowed), name
        outputs = [o for _, _, outs in jobs for o in outs]
        for path in declared:  # each declared out is made by the stage, and the stage makes nothing else
            assert any(o == path or o.startswith(path + "/") for o in outputs), (name, path)
        for output in outputs:
            assert any(output == p or output.startswith(p + "/") for p in declared), (name, output)


def test_dvc_repro_of_a_training_stage_resumes_from_the_kept_state(origin):
    a = origin.a
    checkpoints = sorted((a / "results" / "conv4" / "checkpoints").glob("epoch_*.pt"))
    before = {p.name: p.read_bytes() for p in checkpoints}
    assert (a / "results" / "conv4" / "train_state").is_dir()
    repro = dvc_cmd(a, "repro", "--force", "--single-item", "train-conv4")
    assert "Running stage 'train-conv4'" in repro.stdout
    train_log = (a / "logs" / "train" / "conv4.log").read_text()
    assert "resuming from" in train_log, train_log  # no epoch was trained again
    assert {p.name: p.read_bytes() for p in checkpoints} == before
    assert status(a) == {}
    # DVC rewrote the outputs of the stage it ran: Snakemake sees new times until the clone is settled again
    metacollapse(a, "dvc-settle")
    assert nothing_to_do(a)


def test_changing_a_training_parameter_makes_training_and_everything_downstream_stale(clone_b):
    config = clone_b / "config" / "config.yaml"
    text = config.read_text()
    changed, n = re.subn(r"(?m)^(  lr: )(\S+)$", lambda m: f"{m[1]}{float(m[2]) * 2}", text)
    assert n == 1
    config.write_text(changed)
    try:
        assert set(status(clone_b)) == {"train-conv4", "train-resnet18"}
        dry = dvc_cmd(clone_b, "repro", "--dry", "--force-downstream")
        stale_stages = set(re.findall(r"Running stage '([^']+)'", dry.stdout))
        assert stale_stages == {
            *(f"{kind}-{b}" for kind in ("train", "evaluate", "features") for b in ("conv4", "resnet18")),
            "nc-table",
            "figures",
            "summary",
        }
        jobs = dry_run_jobs(snakemake(clone_b, "--cores", "2", "-n").stdout)
        assert {rule for rule, _, _ in jobs} == {
            "train",
            "evaluate",
            "dump_features",
            "nc_metrics",
            "aggregate_nc",
            "figures",
            "dvc_summary",
            "all",
        }
    finally:
        config.write_text(text)
    assert status(clone_b) == {}
    assert nothing_to_do(clone_b)


def test_deleting_one_feature_file_recomputes_only_that_epoch_and_what_follows(clone_b):
    target = "results/conv4/features/epoch_002.npz"
    (clone_b / target).unlink()
    jobs = dry_run_jobs(snakemake(clone_b, "--cores", "2", "-n").stdout)
    assert Counter(rule for rule, _, _ in jobs) == Counter(
        {"dump_features": 1, "nc_metrics": 1, "aggregate_nc": 1, "figures": 1, "dvc_summary": 1, "all": 1}
    )
    outputs = {rule: outs for rule, _, outs in jobs}
    assert outputs["dump_features"] == [target] and outputs["nc_metrics"] == ["results/conv4/nc/epoch_002.csv"]

    before = file_tree(clone_b, "data", "results")
    snakemake(clone_b, "--cores", "2")
    after = file_tree(clone_b, "data", "results")
    rewritten = {p for p in after if before.get(p) != after[p]}
    allowed = re.compile(
        r"results/(conv4/features/epoch_002\.npz|conv4/nc/epoch_002\.csv|nc_metrics\.csv|figures/.*|metrics\.json"
        r"|plots/.*)"
    )
    assert target in rewritten and "results/conv4/nc/epoch_002.csv" in rewritten
    assert all(allowed.fullmatch(p) for p in rewritten), sorted(p for p in rewritten if not allowed.fullmatch(p))
    assert nothing_to_do(clone_b)
    # The recomputed epoch is bitwise what was pushed, so DVC sees nothing to record either.
    assert status(clone_b) == {}


def test_a_corrupted_remote_object_is_refused_by_dvc_pull(origin):
    c = fresh_clone(origin, "C")
    md5 = lock_md5(c, "results/nc_metrics.csv")
    obj = cache_object(origin.remote, md5)
    good = obj.read_bytes()
    corrupt(obj)
    try:
        pulled = dvc_cmd(c, "pull", "nc-table", check=False)
        assert pulled.returncode != 0, pulled.stdout + pulled.stderr  # `verify = true` on the remote
        assert not (c / "results" / "nc_metrics.csv").exists()
        wrapped = metacollapse(c, "dvc-pull", "nc-table", check=False)
        assert wrapped.returncode != 0 and "verify = true" in wrapped.stderr
    finally:
        os.chmod(obj, 0o644)
        obj.write_bytes(good)
        os.chmod(obj, 0o444)
    metacollapse(c, "dvc-pull", "nc-table")
    assert dvc.md5_file(c / "results" / "nc_metrics.csv") == md5


def test_a_corrupted_cache_object_is_detected_when_pulled(origin):
    d = fresh_clone(origin, "D")
    metacollapse(d, "dvc-pull", "figures")  # a partial pull: verified, Snakemake left alone
    png = d / "results" / "figures" / "nc1.png"
    md5 = dvc.md5_file(png)
    cache = Path(dvc_cmd(d, "cache", "dir").stdout.strip())
    corrupt(cache_object(cache, md5))
    shutil.rmtree(d / "results" / "figures")

    failed = metacollapse(d, "dvc-pull", "figures", check=False)  # DVC itself checks the bad copy out
    assert failed.returncode != 0
    assert "results/figures" in failed.stderr and "nc1.png differs" in failed.stderr
    assert "corrupted cache object" in failed.stderr and str(cache_object(cache, md5)) in failed.stderr

    metacollapse(d, "dvc-settle", "--repair")
    assert not cache_object(cache, md5).exists()
    metacollapse(d, "dvc-pull", "figures")
    assert dvc.md5_file(png) == md5
