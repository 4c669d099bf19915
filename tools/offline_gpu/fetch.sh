#!/usr/bin/env bash
# Pack what an offline GPU machine needs to run the workflow, into one folder to copy there (default .offline/,
# ignored by git): wheels for Snakemake and everything it needs for a target Python (default 3.12, x86-64
# manylinux), a wheel of this package, and the Omniglot zips with their SHA256SUMS. Torch, torchvision, numpy,
# pandas and matplotlib are expected on the target already (a CUDA image); add them with EXTRA="torch==..." if not.
#   tools/offline_gpu/fetch.sh [OUT_DIR]        # then copy OUT_DIR and run tools/offline_gpu/run.sh there
# Env: PYVER (3.12), SNAKEMAKE (the version installed here), OMNIGLOT (a mirror folder: the zips + SHA256SUMS),
# FASHION (a folder of Fashion-MNIST's four .gz files; default: Debian's dataset-fashion-mnist).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$repo/.offline}
pyver=${PYVER:-3.12}
snakemake_version=${SNAKEMAKE:-$(python3 -c 'import snakemake; print(snakemake.__version__)')}
omniglot=${OMNIGLOT:-$repo/../shared/data/omniglot}
fashion=${FASHION:-/usr/share/datasets/fashion-mnist}
mkdir -p "$out/wheels" "$out/omniglot" "$out/fashion"

# Some of Snakemake's pure-Python dependencies are published as source only: build those here (a wheel of pure
# Python runs on any CPython), then let pip resolve the rest as binary wheels for the target.
target=(--only-binary=:all: --python-version "$pyver" --implementation cp --platform manylinux_2_28_x86_64
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any)
resolved=
for _ in 1 2 3 4 5 6 7 8; do
  # shellcheck disable=SC2086
  if log=$(python3 -m pip download -q "${target[@]}" --find-links "$out/wheels" -d "$out/wheels" \
      "snakemake==$snakemake_version" ${EXTRA:-} 2>&1); then
    resolved=yes
    break
  fi
  spec=$(grep -o 'No matching distribution found for [^ ]*' <<<"$log" | head -1) \
    || { echo "$log" >&2; exit 1; }
  spec=${spec##* }
  echo "building a wheel of $spec (published as source only)"
  python3 -m pip wheel -q --no-deps -w "$out/wheels" "$spec"
done
[ -n "$resolved" ] || { echo "could not resolve snakemake==$snakemake_version for Python $pyver" >&2; exit 1; }
# Build this package's wheel from a copy: setuptools would leave build/ in the checkout.
src_copy=$(mktemp -d)
trap 'rm -rf "$src_copy"' EXIT
cp -r "$repo/pyproject.toml" "$repo/README.md" "$repo/src" "$src_copy/"
python3 -m pip wheel -q --no-deps --no-build-isolation -w "$out/wheels" "$src_copy"

cp "$omniglot"/images_background.zip "$omniglot"/images_evaluation.zip "$omniglot"/SHA256SUMS "$out/omniglot/"
(cd "$out/omniglot" && sha256sum -c --quiet SHA256SUMS)
# Fashion-MNIST's four files (a folder the download verifies by their decompressed content, docs/data.md).
cp "$fashion"/*-ubyte.gz "$out/fashion/"
du -sh "$out"
