# The start: damaged processed data and unverifiable raw files are removed so that Snakemake makes them again,
# `metacollapse plan` checks the runs with the package and resolves their runtime, and before a local run that
# trains, `metacollapse estimate` says how long that would take on a CPU.
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from snakemake.logging import logger


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_text(path, text):
    Path(f"{path}.tmp").write_text(text)
    os.replace(f"{path}.tmp", path)


def write_manifest(files, path):
    """What a prepare job made: each file's size, mtime and sha256."""
    entries = {}
    for file in map(Path, files):
        stat = file.stat()
        entries[str(file)] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256_file(file)}
    write_text(path, json.dumps(entries, indent=1, sort_keys=True) + "\n")


def read_manifest(dataset):
    try:
        return json.loads(Path(manifest(dataset)).read_text())
    except (OSError, ValueError):
        return None


def damaged_files(dataset, update):
    """Files of a dataset's manifest whose bytes are no longer those prepare wrote: the size differs or, where the
    mtime moved, the sha256. A moved mtime with the same bytes (a cluster executor touches the outputs of remote
    jobs) is written back into the manifest when ``update``."""
    entries = read_manifest(dataset)
    if not isinstance(entries, dict):
        return [f"{manifest(dataset)}: not a readable manifest"]
    damaged, moved = [], False
    for file, entry in entries.items():
        if not Path(file).exists():
            continue  # missing: Snakemake makes it again by itself
        stat = Path(file).stat()
        if stat.st_size != entry["size"]:
            damaged.append(f"{file}: {stat.st_size} bytes, {entry['size']} when prepared")
        elif stat.st_mtime_ns != entry["mtime_ns"]:
            if sha256_file(file) != entry["sha256"]:
                damaged.append(f"{file}: its sha256 differs from the one it was prepared with")
            else:
                entry["mtime_ns"], moved = stat.st_mtime_ns, True
    if moved and update and not damaged:  # its own mtime stays: bookkeeping must not look like new data
        stat = Path(manifest(dataset)).stat()
        write_text(manifest(dataset), json.dumps(entries, indent=1, sort_keys=True) + "\n")
        os.utime(manifest(dataset), ns=(stat.st_atime_ns, stat.st_mtime_ns))
    return damaged


PYTHON = shutil.which("python") or sys.executable  # the interpreter the rules run
PLAN_TIMEOUT_S = 300


def run_plan(raw):
    """`metacollapse plan` on every run: the package's own checks of the run specs (a problem stops the workflow,
    one line each) and the runtime of each run here. None, with one warning, where the package cannot run."""
    request = {k: config[k] for k in ("device", "precision", "deterministic")} | {"runs": RUNS, "raw": raw}
    command = [PYTHON, "-m", "metacollapse", "plan", "--report-device-error"]
    try:
        result = subprocess.run(
            command, input=json.dumps(request), capture_output=True, text=True, timeout=PLAN_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        result = subprocess.CompletedProcess(command, 1, "", f"{type(error).__name__}: {error}")
    problems = [line for line in result.stderr.splitlines() if line.startswith("metacollapse plan: error: ")]
    if result.returncode == 2 and problems:
        raise SystemExit("\n".join(problems))
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
        logger.warning(
            f"metacollapse plan cannot run here ({reason}): run specs are checked against the schema only, and "
            "the torch stages get device, precision and deterministic as configured"
        )
        return None
    return json.loads(result.stdout)


def check_workspace():
    """What `metacollapse plan` says, and the raw files that no longer verify where prepare needs them (``repair``
    removes those when jobs really run). The manifest of processed files that no longer match it or are of another
    data version goes at once, also in a dry run (it is bookkeeping, not data), so that prepare runs."""
    repairs, stale = [], set()
    for dataset in (d for d in USED_DATASETS if Path(manifest(d)).exists()):
        damaged = damaged_files(dataset, update=False)
        if not damaged and not CURRENT_DATA[dataset]:  # other split lists or prepare code made them
            damaged = [f"data of {dataset}: version {recorded_version(dataset)}, today's is {data_version(dataset)}"]
        for line in damaged:
            logger.warning(f"{line}: {DATASETS[dataset]['command']} makes it again")
        if damaged and not OTHER_SNAKEMAKE:  # the version file stays: readers of today's version keep ancient inputs
            os.remove(manifest(dataset))
            stale.add(dataset)
    unprepared = [
        d for d in USED_DATASETS if d in stale or not all(map(os.path.exists, [*prepared_files(d), manifest(d)]))
    ]
    raw = [
        {"dataset": d, "dir": DATASETS[d]["raw_dir"], "mirror": os.environ[mirror_env(d)]}
        for d in unprepared  # only the raw files prepare is to read: a finished workspace checks none
        if any(map(os.path.exists, raw_files(d)))
    ]
    plan = run_plan(raw)
    for line in plan["notes"] if plan else []:
        logger.warning(line)
    for file in plan["unverified"] if plan else []:
        logger.warning(f"{file} does not verify against its configured source: to be downloaded again")
        repairs.append(file)
    return plan, repairs


# Another Snakemake working here holds a lock (this one takes its own later). Not again in each job's own Snakemake.
OTHER_SNAKEMAKE = any(Path(".snakemake/locks").glob("*.lock"))
PLAN, REPAIRS = check_workspace() if workflow.is_main_process else (None, [])


def repair(wildcards):
    """An input function of the target `all`, so it runs while Snakemake builds the jobs and before it looks at
    the files. It removes the raw files check_workspace found (and records moved file times in the manifests),
    unless this is a dry run, --touch, or another Snakemake works here. It adds no input."""
    if workflow.dryrun or workflow.touch or OTHER_SNAKEMAKE:
        return []
    for path in filter(os.path.exists, REPAIRS):
        os.remove(path)
    REPAIRS.clear()
    for dataset in (d for d in USED_DATASETS if Path(manifest(d)).exists()):
        damaged_files(dataset, update=True)
    return []


def jobs_run_here():
    """Whether the jobs run on this machine (known once the jobs are planned). Snakemake runs in threads for a
    cluster executor, the only sign of one in a dry run, where the executor itself is the dry-run one."""
    settings = getattr(workflow, "execution_settings", None)
    return workflow.local_exec and not (settings and settings.use_threads)


def runtime(run, stage):
    """The runtime token of a run's torch stage (``cpu/bf16``, ``cuda:0/bf16/deterministic``): the rule parameter
    that decides a rerun, so spellings of the same device, determinism on a CPU or thread counts rerun nothing.

    Resolved on this machine by `metacollapse plan` when the jobs run here (a device it lacks stops the workflow);
    on a cluster, or without the package here, the settings as configured.
    """
    if PLAN is not None and jobs_run_here():
        if PLAN["device_error"]:
            raise SystemExit(f"metacollapse plan: error: {PLAN['device_error']}")
        device, precision, *rest = PLAN["runs"][run]["runtime"].split("/")
    else:
        device, precision, rest = config["device"], config["precision"], ["deterministic"] * config["deterministic"]
    deterministic = stage == "train" and rest  # only training takes it
    return f"{device}/{precision}/deterministic" if deterministic else f"{device}/{precision}"


def runtime_flags(token):
    """The command-line options of a runtime token."""
    device, precision, *rest = token.split("/")
    return f"--device {device} --precision {precision}" + (" --deterministic" if "deterministic" in rest else "")


ESTIMATE_LIMIT_S = 180


def estimate_training_time():
    """Before a local run that trains: how long the runs it trains would take on this CPU (`metacollapse estimate`
    warns and names the CPU presets), given at most ESTIMATE_LIMIT_S."""
    todo = sorted({job.wildcards.run for job in workflow.dag.needrun_jobs() if job.rule.name == "train"})
    if not todo or workflow.touch or not jobs_run_here():
        return
    plan = {"runs": [RUNS[run] for run in todo], "device": config["device"], "precision": config["precision"]}
    try:
        subprocess.run(
            [PYTHON, "-m", "metacollapse", "estimate"],
            env=os.environ | {"METACOLLAPSE_PLAN": json.dumps(plan)},
            timeout=ESTIMATE_LIMIT_S,
        )
    except subprocess.TimeoutExpired:
        logger.warning(f"the training-time estimate took over {ESTIMATE_LIMIT_S} s and was left out")
