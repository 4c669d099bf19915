"""The install surfaces agree: pyproject.toml, environment.yml, the console script and docs/CONTRACTS.md."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib

import yaml

# conda-forge names the torch package differently; everything else is the same name on both sides.
CONDA_NAMES = {"pytorch": "torch"}


def requirement_name(spec: str) -> str:
    return re.split(r"[<>=!~\[; ]", spec.strip(), maxsplit=1)[0].lower()


def test_environment_yml_and_pyproject_name_the_same_dependencies(repo_root):
    pyproject = tomllib.loads((repo_root / "pyproject.toml").read_text())
    pip_deps = {requirement_name(d) for d in pyproject["project"]["dependencies"]}
    env = yaml.safe_load((repo_root / "environment.yml").read_text())
    conda_deps = {
        CONDA_NAMES.get(requirement_name(d), requirement_name(d)) for d in env["dependencies"] if isinstance(d, str)
    } - {"python", "pip"}
    assert conda_deps == pip_deps
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-e ." in pip_section
    rule_env = yaml.safe_load((repo_root / "workflow" / "envs" / "metacollapse.yaml").read_text())
    assert {CONDA_NAMES.get(requirement_name(d), requirement_name(d)) for d in rule_env["dependencies"]} - {
        "python"
    } == pip_deps


def test_required_dependencies_are_declared(repo_root):
    pyproject = tomllib.loads((repo_root / "pyproject.toml").read_text())
    declared = {requirement_name(d) for d in pyproject["project"]["dependencies"]}
    assert {"snakemake", "torch", "torchvision", "dvc", "numpy", "pandas", "matplotlib"} <= declared


def test_console_script_lists_every_stage():
    result = subprocess.run([sys.executable, "-m", "metacollapse.cli", "--help"], capture_output=True, text=True)
    for command in ("download", "prepare", "data-info", "train", "evaluate", "features", "nc", "figures"):
        assert command in result.stdout


def test_the_package_never_imports_snakemake(repo_root):
    for path in (repo_root / "src" / "metacollapse").glob("*.py"):
        assert not re.search(r"^\s*(import|from)\s+snakemake", path.read_text(), flags=re.M), path


def test_docs_contracts_lists_every_subcommand_with_all_its_options(repo_root):
    import argparse

    from metacollapse.cli import build_parser

    lines = {
        line[3:].split()[0]: line
        for line in (repo_root / "docs" / "CONTRACTS.md").read_text().splitlines()
        if line.startswith("- `")
    }
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        assert name in lines, f"docs/CONTRACTS.md does not list `{name}`"
        for action in sub._actions:
            longs = [o for o in action.option_strings if o.startswith("--") and o != "--help"]
            assert not longs or any(o in lines[name] for o in longs), f"`{name}` {longs} missing from CONTRACTS.md"
