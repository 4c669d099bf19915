"""The workflow on SLURM: `snakemake --profile workflow/profiles/slurm` on a one-node cluster on localhost.

tests/slurm/start.sh installs SLURM + MUNGE from the distribution's packages if needed and starts munged,
slurmctld and slurmd (one node, 16 declared CPUs, one fake GPU); the session fixture below always stops them
again (tests/slurm/stop.sh), also when a test or the start itself fails. Needs root or passwordless sudo.

Selected only on request, because it takes minutes:
    pytest -m slurm tests/test_slurm.py
By default the quick preset runs with its conv4 run only (every rule, a fraction of the time): the test adds an
overlay config (config/slurm_test.yaml in its workspace) that sets the other runs and the sweeps to null.
METACOLLAPSE_SLURM_RUNS=all runs every run of config/quick.yaml; a comma-separated list (e.g. conv4,learners) keeps
those entries of `runs:` and `sweeps:`.
"""

from __future__ import annotations

import atexit
import csv
import json
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
# Wall-clock columns: the only things allowed to differ between two runs.
TIMING_KEYS = {"seconds", "steps_per_s"}
# What the workflow writes (besides data/ and logs/): results and the DVC metrics and plots.
OUTPUT_DIRS = ("results", "reports")
# Environment that would steer the profile or the plugin away from the test cluster.
SCRUBBED_ENV = ("SBATCH_", "SLURM_", "SALLOC_", "SRUN_", "SNAKEMAKE_PROFILE", "METACOLLAPSE_GPU_PARTITION")
# The plugin's default status command is sacct, which needs an accounting database; the test cluster has
# none, so job states come from squeue (MinJobAge=600 keeps finished jobs listed). Status checks start
# after 2 s instead of 40 s. Both are executor options a real cluster does not need.
SLURM_TEST_FLAGS = ["--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2"]
RUN_TIMEOUT = 3600
# Rules that declare `resources: gpu=1`.
GPU_RULES = {"train", "evaluate", "features"}
# The Snakefile's `localrules`: they run in the submitting Snakemake, never through sbatch.
LOCAL_RULES = {"all", "download", "download_fashion", "probes", "aggregate", "figures", "dvc_metrics"}
# Submitted rules that run once per run ({run} wildcard); `prepare` runs once.
PER_RUN_RULES = {"train", "evaluate", "features", "nc"}
# The test's overlay on config/quick.yaml (written into the workspace by make_workspace).
TEST_PRESET = "config/slurm_test.yaml"
# Which entries of `runs:` / `sweeps:` the test keeps (see the module docstring).
RUNS_SELECTION = os.environ.get("METACOLLAPSE_SLURM_RUNS", "conv4")
# The run whose nc job the failure test breaks.
FAILING_RUN = "conv4"


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
    if not _can_be_root():
        pytest.fail("the SLURM test cluster needs root or passwordless sudo")

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
    """What a workspace needs to run the workflow: what conftest.py copies, and the top-level YAML."""
    from conftest import WORKFLOW_FILES

    return sorted(set(WORKFLOW_FILES) | {p.name for p in REPO.glob("*.y*ml")})


def config_entries() -> dict[str, set[str]]:
    """The names under `runs:` and `sweeps:` of config/config.yaml merged with config/quick.yaml."""
    merged: dict[str, set[str]] = {"runs": set(), "sweeps": set()}
    for name in ("config.yaml", "quick.yaml"):
        config = yaml.safe_load((REPO / "config" / name).read_text()) or {}
        for key in merged:
            for entry, value in (config.get(key) or {}).items():
                (merged[key].add if value is not None else merged[key].discard)(entry)
    return merged


def preset_overlay(selection: str = RUNS_SELECTION) -> dict | None:
    """The overlay on config/config.yaml + config/quick.yaml that drops every run and sweep not in ``selection``
    (None for "all"). Config files merge key by key, so a run or sweep is dropped by setting it to null."""
    if selection == "all":
        return None
    merged = config_entries()
    wanted = {name.strip() for name in selection.split(",") if name.strip()}
    unknown = wanted - merged["runs"] - merged["sweeps"]
    if unknown or not wanted:
        raise ValueError(
            f"METACOLLAPSE_SLURM_RUNS={selection!r}: expected 'all' or names from runs {sorted(merged['runs'])} "
            f"or sweeps {sorted(merged['sweeps'])} of config/config.yaml + config/quick.yaml; unknown {sorted(unknown)}"
        )
    return {key: {name: None for name in sorted(names - wanted)} for key, names in merged.items()}


def make_workspace(root: Path) -> Path:
    """A copy of the workflow plus the test's overlay config (TEST_PRESET) next to the quick preset."""
    for name in workflow_files():
        source, target = REPO / name, root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not source.exists():
            continue
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    overlay = preset_overlay()
    if overlay is not None:
        (root / TEST_PRESET).write_text(
            "# Overlay on config/quick.yaml for tests/test_slurm.py: drops runs and sweeps (null).\n"
            + yaml.safe_dump(overlay, sort_keys=True)
        )
    return root


def run_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(SCRUBBED_ENV)}
    # Jobs inherit this PATH (sbatch --export=ALL), so the rules' `python` is this interpreter, with the
    # dependencies installed (the workflow points PYTHONPATH at the workspace's copy of the package).
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
    presets = ["config/quick.yaml"] + ([TEST_PRESET] if preset_overlay() is not None else [])
    from omniglot_fakes import debian_fashion_mirror

    mirrors = [f"omniglot_mirror={mirror}", f"fashion_mirror={debian_fashion_mirror()}"]
    return ["--configfile", *presets, "--config", *mirrors]


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
def slurm_run(tmp_path_factory, slurm_cluster, mirror) -> tuple[Path, str, dict[str, tuple[str, str, str]]]:
    """The SLURM run, its output, and {SLURM job id: (rule, wildcards, the job's record in slurmctld)}.

    ``wildcards`` is the folder the plugin names the job's log after ("" for a rule without wildcards).
    """
    workdir = make_workspace(tmp_path_factory.mktemp("slurm"))
    code, output, seconds = snakemake(
        workdir, "--profile", "workflow/profiles/slurm", *SLURM_TEST_FLAGS, *quick_args(mirror)
    )
    assert code == 0, f"SLURM run failed:\n{failure_report(output, workdir)}"
    print(f"\nSLURM run: {seconds:.0f}s")
    # Read the jobs back from the controller now, while it still lists them (MinJobAge=600 s).
    jobs = {}
    submitted = re.findall(
        r"submitted with SLURM jobid (\d+) \(log: \S*/slurm_logs/rule_(\w+)/(?:([^/\s]+)/)?\1\.log\)", output
    )
    for jobid, rule, wildcards in submitted:
        record = subprocess.run(["scontrol", "-o", "show", "job", jobid], capture_output=True, text=True)
        jobs[jobid] = (rule, wildcards, record.stdout)
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
    """Asserts that two runs produced the same numbers under results/ and reports/; returns the files compared."""
    import torch

    def files(root: Path) -> list[Path]:
        return sorted(p.relative_to(root) for folder in OUTPUT_DIRS for p in (root / folder).rglob("*") if p.is_file())

    ref_files, other_files = files(reference), files(other)
    assert ref_files == other_files, (
        f"the two runs wrote different files: only in {reference}: {sorted(set(ref_files) - set(other_files))}, "
        f"only in {other}: {sorted(set(other_files) - set(ref_files))}"
    )
    compared = []
    for rel in ref_files:
        a, b = reference / rel, other / rel
        if rel.suffix == ".csv":
            assert read_csv(a) == read_csv(b), f"{rel} differs"
        elif rel.suffix == ".json":
            assert json.loads(a.read_text()) == json.loads(b.read_text()), f"{rel} differs"
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


# --- reading Snakemake's output and SLURM's job records -------------------------------------------------


def job_blocks(output: str) -> dict[str, str]:
    """Snakemake job id -> the indented block Snakemake printed for a submitted (non-local) job."""
    blocks = re.findall(r"^rule \w+:\n((?:    .*\n)+)", output, re.MULTILINE)
    return {re.search(r"^    jobid: (\d+)$", b, re.M).group(1): b for b in blocks}


def block_value(block: str, pattern: str, default: str | None = None) -> str:
    match = re.search(pattern, block, re.MULTILINE)
    assert match or default is not None, f"no {pattern!r} in the job block:\n{block}"
    return match.group(1) if match else default


def slurm_minutes(time_limit: str) -> int:
    """SLURM's TimeLimit ([D-]HH:MM:SS, MM:SS) in minutes."""
    days, _, clock = time_limit.rpartition("-")
    parts = [int(x) for x in clock.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    hours, minutes, seconds = parts
    return (int(days or 0) * 24 + hours) * 60 + minutes + (seconds > 0)


def slurm_megabytes(memory: str) -> int:
    """SLURM's memory fields (e.g. 32000M, 16G) in MB as sbatch --mem counts them (1G = 1024M)."""
    number, unit = re.fullmatch(r"([\d.]+)([KMGT]?)", memory).groups()
    return round(float(number) * {"K": 1 / 1024, "M": 1, "": 1, "G": 1024, "T": 1024**2}[unit])


def record_field(record: str, key: str) -> str:
    match = re.search(rf"(?:^|\s){re.escape(key)}=(\S*)", record)
    assert match, f"no {key}= in the job record: {record}"
    return match.group(1)


def expected_runs(local_run: Path) -> set[str]:
    """The runs of the test preset, as the local reference run trained them."""
    runs = {p.parent.name for p in (local_run / "results").glob("*/train_log.csv")}
    overlay = preset_overlay()
    if overlay is not None and not overlay["sweeps"].keys() ^ config_entries()["sweeps"]:
        # Every sweep dropped: exactly the selected entries of `runs:` are left.
        assert runs == {name.strip() for name in RUNS_SELECTION.split(",")}, runs
    return runs


# --- tests -----------------------------------------------------------------------------------------------


def test_quick_preset_on_slurm_matches_local_run(slurm_run, local_run):
    workdir, output, jobs = slurm_run
    runs = expected_runs(local_run)
    # The localrules ran in the submitting Snakemake and were never submitted; every other job went through
    # sbatch: `prepare` once, and train, evaluate, features and nc once per run.
    local = re.findall(r"^localrule (\w+):$", output, flags=re.MULTILINE)
    assert sorted(local) == sorted(LOCAL_RULES), f"local jobs {local}:\n{output[-4000:]}"
    remote_rules = re.findall(r"^rule (\w+):$", output, flags=re.MULTILINE)
    assert sorted(rule for rule, _, _ in jobs.values()) == sorted(remote_rules), output[-4000:]
    submitted = sorted((rule, wildcards) for rule, wildcards, _ in jobs.values())
    # (prepare_fashion too where the preset reads Fashion-MNIST.)
    prepares = ["prepare"] + ["prepare_fashion"] * (local_run / "data/processed/fashion_manifest.json").exists()
    expected = sorted([*((rule, "") for rule in prepares), *((rule, run) for rule in PER_RUN_RULES for run in runs)])
    assert submitted == expected, f"submitted (rule, run) {submitted}, expected {expected}"
    assert not LOCAL_RULES & {rule for rule, _ in submitted}
    # Each job's allocation: CPUs per task = the rule's threads, a GPU for exactly the GPU rules, and the
    # profile's time limit and memory (the job block's resources) as SLURM recorded them.
    blocks = job_blocks(output)
    snakemake_id = {
        slurm: job for job, slurm in re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", output)
    }
    for jobid, (rule, wildcards, record) in jobs.items():
        where = f"SLURM job {jobid} ({rule} {wildcards})"
        block = blocks[snakemake_id[jobid]]
        assert record_field(record, "JobState") == "COMPLETED", f"{where}: {record}"
        threads = block_value(block, r"^    threads: (\d+)$", default="1")
        assert block_value(block, r"\bcpus_per_task=(\d+)") == threads, f"{where}:\n{block}"
        assert record_field(record, "CPUs/Task") == threads, f"{where}: {threads} threads; {record}"
        minutes = int(block_value(block, r"\bruntime=(\d+)"))
        assert slurm_minutes(record_field(record, "TimeLimit")) == minutes, f"{where}: runtime={minutes}; {record}"
        mem_mb = int(block_value(block, r"\bmem_mb=(\d+)"))
        assert slurm_megabytes(record_field(record, "MinMemoryNode")) == mem_mb, f"{where}: mem_mb={mem_mb}; {record}"
        gpus = re.search(r"TresPerJob=\S*gres[:/]gpu:(\d+)", record)
        if rule in GPU_RULES:
            assert gpus and gpus.group(1) == "1", f"{where} has no GPU: {record}"
        else:
            assert gpus is None, f"{where} got a GPU: {record}"
    compared = compare_results(local_run, workdir)
    for table in ("train_log", "fewshot_accuracy", "nc_metrics"):
        assert f"results/{table}.csv" in compared, compared
    assert any(c.startswith("reports/metrics/") for c in compared), compared
    for run in runs:
        assert f"results/{run}/checkpoints/epoch_000.pt" in compared, compared
        assert f"results/{run}/features/epoch_000.npz" in compared, compared
        assert f"results/{run}/nc/epoch_000.csv" in compared, compared


def test_failed_job_reports_its_slurm_log_and_rerun_resumes(slurm_run, mirror, tmp_path):
    source, _, _ = slurm_run
    workdir = tmp_path / "work"
    shutil.copytree(source, workdir, symlinks=True)  # copy2 keeps mtimes, so nothing looks outdated
    runs = {p.parent.name for p in (workdir / "results").glob("*/train_log.csv")}
    assert FAILING_RUN in runs, runs
    # The state of a first run that got as far as the feature dumps: the nc tables of one run and everything
    # made from them (aggregate tables, figures, DVC metrics) are still to do. (Snakemake does not remake missing
    # intermediate files whose consumers are up to date, so the downstream outputs have to go too.)
    nc_tables = sorted((workdir / "results" / FAILING_RUN / "nc").glob("epoch_*.csv"))
    assert workdir / "results" / FAILING_RUN / "nc" / "epoch_002.csv" in nc_tables, nc_tables
    for path in [*nc_tables, *(workdir / "results").glob("*.csv")]:
        path.unlink()
    for folder in (workdir / "results" / "figures", workdir / "reports"):
        shutil.rmtree(folder)
    # Everything else must survive the failed run and the resumed one untouched.
    upstream = [
        *(workdir / "data" / "processed").iterdir(),
        *(p for p in (workdir / "results").rglob("*") if p.is_file()),
    ]
    for kind in ("probes.npz", "checkpoints/epoch_000.pt", "features/epoch_002.npz", "train_log.csv"):
        assert any(str(p).endswith(kind) for p in upstream), f"no {kind} among {upstream}"
    finished_before = {p: p.stat().st_mtime_ns for p in upstream}

    # Rules run `python -m metacollapse ...`: a `python` in front of the real one on the jobs' PATH breaks the
    # `nc` command of one run. The nc job of a run tabulates all its epochs in one call, so the whole job fails.
    shim_dir = tmp_path / "bin"
    shim_dir.mkdir()
    marker = tmp_path / "broken"
    marker.touch()
    shim = shim_dir / "python"
    shim.write_text(
        "#!/bin/sh\n"
        f'if [ -e "{marker}" ] && [ "$1 $2 $3" = "-m metacollapse nc" ]; then\n'
        f'  case "$*" in *results/{FAILING_RUN}/features/epoch_002.npz*)\n'
        '    echo "injected failure: $*" >&2; exit 7;;\n'
        "  esac\n"
        "fi\n"
        f'exec "{sys.executable}" "$@"\n'
    )
    shim.chmod(0o755)
    env = run_env()
    env["PATH"] = f"{shim_dir}{os.pathsep}{env['PATH']}"
    args = ["--profile", "workflow/profiles/slurm", *SLURM_TEST_FLAGS, *quick_args(mirror)]

    code, output, seconds = snakemake(workdir, *args, env=env)
    print(f"\nfailing SLURM run: {seconds:.0f}s")
    assert code != 0, output[-4000:]
    # (The failed job's SLURM log, quoted below its error, repeats the rule's header.)
    assert set(executed_rules(output)) == {"nc"}, executed_rules(output)
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
    # One error per attempt of the same job (the profile retries a failed job once).
    for rule, jobid, state, block, external_jobid in errors:
        assert (rule, state, external_jobid) == ("nc", "FAILED", jobid), block
        # "log:" lists the rule's own log file, then the SLURM log of the job.
        match = re.search(
            rf"^\s+log: logs/nc/{FAILING_RUN}\.log, ([^\s,]*\.snakemake/slurm_logs/rule_nc/{FAILING_RUN}/(\d+)\.log)",
            block,
            re.M,
        )
        assert match and match.group(2) == jobid, f"no rule log and SLURM log path in the error message:\n{block}"
        log = Path(match.group(1)) if Path(match.group(1)).is_absolute() else workdir / match.group(1)
        assert log.is_file(), f"{log} does not exist"
        text = log.read_text()
        assert "rule nc:" in text and "non-zero exit status 7" in text, text[-3000:]
    assert "injected failure" in (workdir / "logs" / "nc" / f"{FAILING_RUN}.log").read_text()
    assert not any(p.exists() for p in nc_tables), "the failed nc job left outputs behind"
    changed = sorted(str(p) for p, t in finished_before.items() if p.stat().st_mtime_ns != t)
    assert not changed, f"finished outputs were rewritten: {changed}"

    # Fix the cause, run again: only the failed job (on SLURM) and what depends on it (local rules) run.
    marker.unlink()
    code, output, seconds = snakemake(workdir, *args, env=env)
    print(f"resumed SLURM run: {seconds:.0f}s")
    assert code == 0, failure_report(output, workdir)
    rules = executed_rules(output)
    assert sorted(rules) == ["aggregate", "all", "dvc_metrics", "figures", "nc"], rules
    nc_jobs = re.findall(
        r"submitted with SLURM jobid (\d+) \(log: \S*/slurm_logs/rule_(\w+)/([^/\s]+)/\1\.log\)", output
    )
    assert [(rule, run) for _, rule, run in nc_jobs] == [("nc", FAILING_RUN)], nc_jobs
    assert sorted(re.findall(r"^localrule (\w+):$", output, re.M)) == ["aggregate", "all", "dvc_metrics", "figures"]
    changed = sorted(str(p) for p, t in finished_before.items() if p.stat().st_mtime_ns != t)
    assert not changed, f"finished outputs were rewritten: {changed}"
    compared = compare_results(source, workdir)
    assert f"results/{FAILING_RUN}/nc/epoch_002.csv" in compared and "results/nc_metrics.csv" in compared, compared
