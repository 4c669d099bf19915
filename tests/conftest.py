"""Shared fixtures: the real Omniglot mirror, synthetic processed splits, and throwaway workflow checkouts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = ["Snakefile", "workflow", "config", "data/splits", "src/metacollapse"]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def omniglot_mirror() -> Path:
    """The full Omniglot image set as a download mirror: ``$METACOLLAPSE_OMNIGLOT_MIRROR``, else
    ``../shared/data/omniglot`` beside the clone (CI has it), else a mirror of the official zips fetched once into
    ``${XDG_CACHE_HOME:-~/.cache}/metacollapse/omniglot``. Fails (never skips) with what to do when none works.
    """
    from omniglot_fakes import real_mirror

    return real_mirror()


def venv_env() -> dict[str, str]:
    """The environment with this interpreter's bin/ first, so rules find the `metacollapse` entry point."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def make_workspace(root: Path) -> Path:
    """A fresh copy of the workflow (no data, no results) to run Snakemake in without touching the repo."""
    root.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        source, target = REPO / name, root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    return root


def snakemake(workdir: Path, *args: str, check: bool = True, timeout: float = 1800) -> subprocess.CompletedProcess:
    """Run the real Snakemake CLI in ``workdir``; on failure show its output and the job logs."""
    command = [sys.executable, "-m", "snakemake", "--cores", "2", *args]
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=timeout, env=venv_env())
    if check and result.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in sorted((workdir / "logs").rglob("*.log")))
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n"
            f"{result.stderr[-6000:]}\n{logs}"
        )
    return result


@pytest.fixture(scope="session")
def fashion_mirror() -> Path:
    """Fashion-MNIST's four files as Debian's package `dataset-fashion-mnist` installs them (fails, never skips,
    naming the install command, where it is missing)."""
    from omniglot_fakes import debian_fashion_mirror

    return debian_fashion_mirror()


@pytest.fixture(scope="session")
def prepared_workspace(tmp_path_factory, omniglot_mirror, fashion_mirror) -> Path:
    """A workspace where both datasets' prepare rules have run once on the real mirrors (shared by integration
    tests)."""
    workdir = make_workspace(tmp_path_factory.mktemp("prepared"))
    mirrors = [f"omniglot_mirror={omniglot_mirror}", f"fashion_mirror={fashion_mirror}"]
    snakemake(workdir, "prepare", "prepare_fashion", "--config", *mirrors)
    return workdir


@pytest.fixture
def quick_workspace(tmp_path, prepared_workspace) -> Path:
    """A workspace with the real prepared data linked in (so no test re-downloads or re-renders Omniglot)."""
    workdir = make_workspace(tmp_path / "work")
    for stage in ("raw", "processed"):
        shutil.copytree(prepared_workspace / "data" / stage, workdir / "data" / stage, copy_function=os.link)
    return workdir


def synthetic_split(classes: int, per_class: int = 20, seed: int = 0, noise: float = 0.05) -> np.ndarray:
    """Learnable Omniglot-shaped data: each class is a random binary glyph, each image a noisy copy of it."""
    rng = np.random.default_rng(seed)
    glyphs = rng.random((classes, 1, 28, 28)) < 0.2
    flips = rng.random((classes, per_class, 28, 28)) < noise
    return (glyphs ^ flips).astype(np.uint8)


@pytest.fixture
def synthetic_data(tmp_path) -> Path:
    """A processed-data folder with small synthetic train/val/test splits in the pipeline's format."""
    out = tmp_path / "processed"
    out.mkdir()
    for i, (split, classes) in enumerate({"train": 30, "val": 12, "test": 25}.items()):
        np.save(out / f"{split}.npy", synthetic_split(classes, seed=i))
        names = [f"Synthetic/character{c:02d}/rot000" for c in range(1, classes + 1)]
        (out / f"{split}_classes.txt").write_text("\n".join(names) + "\n")
    return out


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory, prepared_workspace) -> Path:
    """The whole quick preset run once per test session (every stage, both backbones) on the real data.

    Tests that only read its outputs share it; tests that change it make their own copy.
    """
    workdir = make_workspace(tmp_path_factory.mktemp("quick_run"))
    for stage in ("raw", "processed"):
        shutil.copytree(prepared_workspace / "data" / stage, workdir / "data" / stage, copy_function=os.link)
    snakemake(workdir, "--configfile", "config/quick.yaml")
    return workdir
