"""The repository's static checks, run by CI as their own step (README.md, "Development"):

    python tools/checks.py

- ruff (lint and format), snakefmt;
- `snakemake --lint` with the package, torch, torchvision and matplotlib unimportable, as the workflow catalog lints
  (the workflow's own Python needs only Snakemake and the standard library);
- CI (.ci/run) installs and tests exactly as README.md says: every command of its "Install" and "Tests" blocks
  appears in .ci/run (`sudo ` aside: CI runs as root).

Prints one line per check and exits 1 if any fails.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BLOCKED = ["metacollapse", "torch", "torchvision", "matplotlib"]  # Snakemake itself brings numpy and pandas
LINT = f"import sys\nfor name in {BLOCKED!r}: sys.modules[name] = None\nfrom snakemake.cli import main\n" + (
    "sys.argv = ['snakemake', '--lint']\nmain()\n"
)


def run(*command: str) -> tuple[bool, str]:
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    return result.returncode == 0, result.stdout + result.stderr


def lint() -> tuple[bool, str]:
    ok, out = run(sys.executable, "-c", LINT)
    return ok and "Congratulations" in out, out


def readme_commands(section: str) -> list[str]:
    readme = (REPO / "README.md").read_text()
    if f"\n## {section}\n" not in readme:
        return [f"<README.md has no section '## {section}'>"]
    body = readme.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", body, flags=re.S)
    lines = [line.split("#", 1)[0].strip() for block in blocks for line in block.splitlines()]
    return [line.removeprefix("sudo ") for line in lines if line]


def ci_follows_readme() -> tuple[bool, str]:
    ci = (REPO / ".ci" / "run").read_text()
    missing = [c for s in ("Install", "Tests") for c in readme_commands(s) if c not in ci]
    return not missing, "" if not missing else f"README commands that .ci/run does not run: {missing}"


CHECKS = {
    "ruff check": lambda: run(sys.executable, "-m", "ruff", "check", "."),
    "ruff format": lambda: run(sys.executable, "-m", "ruff", "format", "--check", "."),
    "snakefmt": lambda: run(sys.executable, "-m", "snakefmt", "--check", "Snakefile", "workflow"),
    "snakemake --lint (Snakemake and the standard library only)": lint,
    "CI installs and tests as README.md says": ci_follows_readme,
}


def main() -> int:
    failed = 0
    for name, check in CHECKS.items():
        ok, output = check()
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
        if not ok:
            failed += 1
            print(output[-4000:])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
