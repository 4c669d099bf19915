"""The workflow on SLURM: `snakemake --profile workflow/profiles/slurm` on a one-node cluster on localhost.

tests/slurm/start.sh installs SLURM + MUNGE from the distribution's packages if needed and starts munged,
slurmctld and slurmd (one node, 16 declared CPUs, one fake GPU); the session fixture below always stops them
again (tests/slurm/stop.sh), also when a test or the start itself fails. Needs root or passwordless sudo.

Selected only on request, because it takes minutes:
    pytest -m slurm tests/test_slurm.py          (or METACOLLAPSE_SLURM_TESTS=1 pytest ...)
By default the quick preset runs with the conv4 backbone only (every rule, a third of the time);
METACOLLAPSE_SLURM_BACKBONES=all runs it with every backbone of config/quick.yaml.
"""

from __future__ import annotations

import atexit
import csv
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
SLURM_SCRIPTS = REPO / "tests" / "slurm"
# What a workspace needs to run the workflow (the profiles live under workflow/); see workflow_files().
WORKFLOW_FILES = ["Snakefile", "workflow", "config", "data/splits"]
# Wall-clock columns / checkpoint keys: the only things allowed to differ between two runs.
TIMING_KEYS = {"seconds", "episodes_per_s"}
# Environment that would steer the profile or the plugin away from the test cluster.
SCRUBBED_ENV = ("SBATCH_", "SLURM_", "SALLOC_", "SRUN_", "SNAKEMAKE_PROFILE", "METACOLLAPSE_GPU_PARTITION")
# The plugin's default status command is sacct, which needs an accounting database; the test cluster has
# none, so job states come from squeue (MinJobAge=600 keeps finished jobs listed). Status checks start
# after 2 s instead of 40 s. Both are executor options a real cluster does not need.
SLURM_TEST_FLAGS = ["--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2"]
RUN_TIMEOUT = 3600
# Rules that declare `resources: gpu=1`.
GPU_RULES = {"train", "evaluate", "dump_features"}


def _selected(config: pytest.Config) -> bool:
    return "slurm" in (config.getoption("markexpr") or "") or os.environ.get("METACOLLAPSE_SLURM_TESTS") == "1"


def _can_be_root() -> bool:
    if os.geteuid() == 0:
        return True
    if shutil.which("sudo") is None:
        return False
    return subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0


def _script(name: str, *args: str, timeout: float) -> subprocess.CompletedProcess:
    command = [str(SLURM_SCRIPTS / name), *args]
    if os.geteuid() != 0:
        command = ["sudo", "-n", "--preserve-env=METACOLLAPSE_SLURM_DIR", *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def slurm_cluster(request):
    """A running one-node SLURM cluster; its daemons are stopped when the session ends, whatever happens."""
    if not _selected(request.config):
        pytest.skip("SLURM tests run only with -m slurm or METACOLLAPSE_SLURM_TESTS=1")
    if not _can_be_root():
        pytest.skip("the SLURM test cluster needs root or passwordless sudo")

    stopped = False

    def on_sigterm(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    def stop():
        nonlocal stopped
        if not stopped:
            stopped = True
            _script("stop.sh", timeout=120)

    # Belt and braces: atexit covers an interpreter exit that skips fixture teardown, and SIGTERM (CI
    # cancelling the job) is turned into an exception so that the finally below and atexit both run.
    atexit.register(stop)
    previous = signal.getsignal(signal.SIGTERM)
    if previous in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, on_sigterm)
    try:
        started = time.monotonic()
        result = _script("start.sh", timeout=900)
        if result.returncode != 0:
            pytest.fail(f"tests/slurm/start.sh failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        print(f"\nSLURM test cluster up in {time.monotonic() - started:.1f}s:\n{result.stderr.strip()}")
        yield
    finally:
        stop()
        if previous in (signal.SIG_DFL, None):
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.fixture(scope="session")
def mirror(omniglot_mirror: Path) -> Path:
    return omniglot_mirror  # the shared lookup in conftest.py


def workflow_files() -> list[str]:
    """The workflow's files: ours, top-level YAML (environment.yml), and whatever conftest.py copies."""
    names = set(WORKFLOW_FILES) | {p.name for p in REPO.glob("*.y*ml")}
    try:
        from conftest import WORKFLOW_FILES as shared
    except ImportError:
        shared = []
    return sorted(names | set(shared))


def make_workspace(root: Path) -> Path:
    """A copy of the workflow plus a config file for the test: config/quick.yaml, one backbone by default."""
    for name in workflow_files():
        source, target = REPO / name, root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not source.exists():
            continue
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    config = yaml.safe_load((REPO / "config" / "quick.yaml").read_text())
    wanted = os.environ.get("METACOLLAPSE_SLURM_BACKBONES", "conv4")
    if wanted != "all":
        config["backbones"] = {name: config["backbones"][name] for name in wanted.split(",")}
    # --configfile merges into config/config.yaml and cannot drop a backbone, so the test preset replaces
    # the default config file of this throwaway copy.
    (root / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return root


def run_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(SCRUBBED_ENV)}
    # Jobs inherit this PATH (sbatch --export=ALL), so they find `metacollapse` and Snakemake's interpreter.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def snakemake(workdir: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, float]:
    """Run the Snakemake CLI; returns (exit code, stdout+stderr, seconds)."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", *args],
        cwd=workdir,
        env=env or run_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    seconds = time.monotonic() - started
    (workdir / f"snakemake-{int(time.time() * 1000)}.out").write_text(result.stdout)
    return result.returncode, result.stdout, seconds


def quick_args(mirror: Path) -> list[str]:
    return ["--config", f"omniglot_mirror={mirror}"]


def failure_report(output: str, workdir: Path) -> str:
    logs = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in sorted((workdir / "logs").rglob("*.log")))
    slurm_logs = "\n".join(
        f"--- {p}\n{p.read_text()[-3000:]}" for p in sorted((workdir / ".snakemake" / "slurm_logs").rglob("*.log"))
    )
    return f"{output[-8000:]}\n{logs[-6000:]}\n{slurm_logs[-6000:]}"


def executed_rules(output: str) -> list[str]:
    """Rules Snakemake started in a run, in order (one entry per job)."""
    return re.findall(r"^(?:local)?rule (\w+):$", output, flags=re.MULTILINE)


@pytest.fixture(scope="session")
def local_run(tmp_path_factory, mirror) -> Path:
    """The reference: the same preset run locally, with the workstation profile."""
    workdir = make_workspace(tmp_path_factory.mktemp("local"))
    code, output, seconds = snakemake(workdir, "--workflow-profile", "workflow/profiles/default", *quick_args(mirror))
    assert code == 0, f"local run failed:\n{failure_report(output, workdir)}"
    print(f"\nlocal run: {seconds:.0f}s")
    return workdir


@pytest.fixture(scope="session")
def slurm_run(tmp_path_factory, slurm_cluster, mirror) -> tuple[Path, str, dict[str, tuple[str, str]]]:
    """The SLURM run, its output, and {SLURM job id: (rule, the job's record in slurmctld)}."""
    workdir = make_workspace(tmp_path_factory.mktemp("slurm"))
    code, output, seconds = snakemake(
        workdir, "--profile", "workflow/profiles/slurm", *SLURM_TEST_FLAGS, *quick_args(mirror)
    )
    assert code == 0, f"SLURM run failed:\n{failure_report(output, workdir)}"
    print(f"\nSLURM run: {seconds:.0f}s")
    # Read the jobs back from the controller now, while it still lists them (MinJobAge=600 s).
    jobs = {}
    for jobid, rule in re.findall(r"submitted with SLURM jobid (\d+) \(log: \S*/slurm_logs/rule_(\w+)/", output):
        record = subprocess.run(["scontrol", "-o", "show", "job", jobid], capture_output=True, text=True)
        jobs[jobid] = (rule, record.stdout)
    return workdir, output, jobs


# --- comparing two result trees -------------------------------------------------------------------------


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in csv.DictReader(handle)]


def assert_same(a, b, where: str) -> None:
    """Exact equality of nested checkpoint contents (tensors bit for bit), ignoring wall-clock fields."""
    import torch

    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys {list(a)} != {list(b)}"
        for key in a:
            if key not in TIMING_KEYS:
                assert_same(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), f"{where}: {a!r} != {b!r}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    elif torch.is_tensor(a):
        assert torch.is_tensor(b) and a.dtype == b.dtype and a.shape == b.shape, f"{where}: tensor layout"
        assert torch.equal(a, b), f"{where}: tensors differ (max |diff| {(a.double() - b.double()).abs().max()})"
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), f"{where}"
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), f"{where}: {a!r} != {b!r}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def compare_results(reference: Path, other: Path) -> list[str]:
    """Asserts that two runs produced the same numbers; returns the files compared."""
    import torch

    ref_files = sorted(p.relative_to(reference) for p in (reference / "results").rglob("*") if p.is_file())
    other_files = sorted(p.relative_to(other) for p in (other / "results").rglob("*") if p.is_file())
    assert ref_files == other_files, "the two runs wrote different files"
    compared = []
    for rel in ref_files:
        a, b = reference / rel, other / rel
        if rel.suffix == ".csv":
            assert read_csv(a) == read_csv(b), f"{rel} differs"
        elif rel.suffix == ".npz":
            with np.load(a, allow_pickle=False) as x, np.load(b, allow_pickle=False) as y:
                assert x.files == y.files, f"{rel}: keys"
                for key in x.files:
                    assert_same(x[key], y[key], f"{rel}:{key}")
        elif rel.suffix == ".pt":
            assert_same(
                torch.load(a, map_location="cpu", weights_only=False),
                torch.load(b, map_location="cpu", weights_only=False),
                str(rel),
            )
        else:  # figures: PNG/PDF carry timestamps; their numbers are the CSVs above
            continue
        compared.append(str(rel))
    return compared


# --- tests -----------------------------------------------------------------------------------------------


def test_quick_preset_on_slurm_matches_local_run(slurm_run, local_run):
    workdir, output, jobs = slurm_run
    # Every job went through sbatch (local rules such as `all` aside), and SLURM gave exactly the GPU rules
    # a GPU, with as many CPUs as the rule has threads.
    remote_rules = re.findall(r"^rule (\w+):$", output, flags=re.MULTILINE)
    assert sorted(rule for rule, _ in jobs.values()) == sorted(remote_rules), output[-4000:]
    assert set(remote_rules) >= GPU_RULES
    # Snakemake job id -> cpus_per_task from the job's block, SLURM job id -> Snakemake job id.
    blocks = re.findall(r"^rule \w+:\n((?:    .*\n)+)", output, re.MULTILINE)
    cpus = {
        re.search(r"^    jobid: (\d+)$", b, re.M).group(1): re.search(r"cpus_per_task=(\d+)", b).group(1)
        for b in blocks
    }
    snakemake_id = {
        slurm: job for job, slurm in re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", output)
    }
    for jobid, (rule, record) in jobs.items():
        assert "JobState=COMPLETED" in record, f"job {jobid} ({rule}): {record}"
        assert f"CPUs/Task={cpus[snakemake_id[jobid]]} " in record, f"job {jobid} ({rule}): {record}"
        gpus = re.search(r"TresPerJob=\S*gres:gpu:(\d+)", record)
        if rule in GPU_RULES:
            assert gpus and gpus.group(1) == "1", f"job {jobid} ({rule}) has no GPU: {record}"
        else:
            assert gpus is None, f"job {jobid} ({rule}) got a GPU: {record}"
    compared = compare_results(local_run, workdir)
    assert "results/nc_metrics.csv" in compared
    assert any(p.endswith("fewshot_accuracy.csv") for p in compared)
    assert any("/checkpoints/" in p for p in compared)


def test_failed_job_reports_its_slurm_log_and_rerun_resumes(slurm_run, mirror, tmp_path):
    source, _, _ = slurm_run
    workdir = tmp_path / "work"
    shutil.copytree(source, workdir, symlinks=True)  # copy2 keeps mtimes, so nothing looks outdated
    backbone = next(iter(yaml.safe_load((workdir / "config" / "config.yaml").read_text())["backbones"]))
    nc_dir = workdir / "results" / backbone / "nc"
    removed = sorted(nc_dir.glob("epoch_*.csv"))
    assert nc_dir / "epoch_002.csv" in removed
    # nc_metrics jobs to redo (the one for epoch 002 will fail); without the aggregate their outputs are
    # needed again (Snakemake does not recreate intermediate files that nothing up to date needs).
    for csv_file in [*removed, workdir / "results" / "nc_metrics.csv"]:
        csv_file.unlink()
    # Everything upstream of nc_metrics: it must survive the failed run and the resumed one untouched.
    upstream = [*(workdir / "data" / "processed").iterdir(), *(workdir / "results").rglob("*.pt")]
    upstream += [*(workdir / "results").rglob("*.npz"), *(workdir / "results").glob("*/fewshot_accuracy.csv")]
    finished_before = {p: p.stat().st_mtime_ns for p in upstream}

    # A broken `metacollapse nc` for one epoch, in front of the real one on the jobs' PATH.
    shim_dir = tmp_path / "bin"
    shim_dir.mkdir()
    marker = tmp_path / "broken"
    marker.touch()
    real = shutil.which("metacollapse", path=str(Path(sys.executable).parent)) or "metacollapse"
    shim = shim_dir / "metacollapse"
    shim.write_text(
        "#!/bin/sh\n"
        f'if [ -e "{marker}" ] && [ "$1" = nc ]; then\n'
        f'  case "$*" in *features/epoch_002.npz*) echo "injected failure: $*" >&2; exit 7;; esac\n'
        "fi\n"
        f'exec "{real}" "$@"\n'
    )
    shim.chmod(0o755)
    env = run_env()
    env["PATH"] = f"{shim_dir}{os.pathsep}{env['PATH']}"
    args = ["--profile", "workflow/profiles/slurm", *SLURM_TEST_FLAGS, *quick_args(mirror)]

    code, output, seconds = snakemake(workdir, *args, env=env)
    print(f"\nfailing SLURM run: {seconds:.0f}s")
    assert code != 0, output[-4000:]
    # The error names the SLURM job and its log file, and that log holds the job's own error.
    # (Blocks whose message is a SLURM job state come from the submitting Snakemake; the job's own Snakemake,
    # quoted from the log below them, reports "message: None".)
    errors = re.findall(
        r"^Error in rule (\w+):\n\s+message: SLURM-job '(\d+)' failed, SLURM status is: '(\w+)'"
        r"(.*?)^\s+external_jobid: (\d+)$",
        output,
        re.MULTILINE | re.DOTALL,
    )
    assert errors, f"no SLURM job error reported:\n{output[-4000:]}"
    for rule, jobid, state, block, external_jobid in errors:
        assert (rule, state, external_jobid) == ("nc_metrics", "FAILED", jobid), block
        # "log:" lists the rule's own log files, then the SLURM log of the job.
        match = re.search(
            r"^\s+log: .*?([^\s,]*\.snakemake/slurm_logs/rule_nc_metrics/[^\s,]+/(\d+)\.log)", block, re.M
        )
        assert match and match.group(2) == jobid, f"no SLURM log path in the error message:\n{block}"
        log = Path(match.group(1)) if Path(match.group(1)).is_absolute() else workdir / match.group(1)
        assert log.is_file(), f"{log} does not exist"
        text = log.read_text()
        assert "rule nc_metrics" in text and "non-zero exit status 7" in text, text[-3000:]
    assert "injected failure" in (workdir / "logs" / "nc_metrics" / backbone / "epoch_002.log").read_text()
    assert not (nc_dir / "epoch_002.csv").exists()
    assert {p: p.stat().st_mtime_ns for p in finished_before} == finished_before, "finished outputs were rewritten"
    done_after_failure = {p: p.stat().st_mtime_ns for p in nc_dir.glob("epoch_*.csv")}

    # Fix the cause, run again: only the failed job and what depends on it run.
    marker.unlink()
    code, output, seconds = snakemake(workdir, *args, env=env)
    print(f"resumed SLURM run: {seconds:.0f}s")
    assert code == 0, failure_report(output, workdir)
    rules = executed_rules(output)
    assert rules.count("nc_metrics") == len(removed) - len(done_after_failure), rules
    assert "aggregate_nc" in rules, rules
    assert not {"download", "prepare", "train", "evaluate", "probes", "dump_features"} & set(rules), rules
    assert {p: p.stat().st_mtime_ns for p in finished_before} == finished_before, "finished outputs were rewritten"
    assert {p: p.stat().st_mtime_ns for p in done_after_failure} == done_after_failure, "finished jobs redone"
    assert read_csv(workdir / "results" / "nc_metrics.csv") == read_csv(source / "results" / "nc_metrics.csv")
