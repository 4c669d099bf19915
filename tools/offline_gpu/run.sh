#!/usr/bin/env bash
# Run the workflow on an offline GPU machine from the folder fetch.sh packed, then pack the small results.
#   OFFLINE=.offline RESULTS=/somewhere tools/offline_gpu/run.sh [snakemake arguments, e.g. a target]
# Installs the wheels into /tmp/metacollapse-site (once), runs Snakemake with the workstation profile and the
# packed Omniglot mirror, stopping itself after BUDGET seconds (default: no limit) so that a machine booked for
# a fixed time can be called again: the next call resumes (training from its last epoch, see
# metacollapse.training). REPORT=0 skips the HTML report (about 10 MB). Writes RESULTS/results.tar.gz: logs, training logs, few-shot tables, NC tables (each
# run's and the aggregated ones), figures and the report (not checkpoints or features, which stay on the machine).
set -uo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
offline=$(cd "${OFFLINE:-$repo/.offline}" && pwd)
site=/tmp/metacollapse-site
export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH} PATH=$site/bin:$PATH PYTHONUNBUFFERED=1
# Already installed (an earlier call on this machine, or an environment made with the README's install)?
if ! { command -v metacollapse && python3 -c 'import snakemake'; } >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$offline"/wheels/*.whl \
    || { echo "installing the wheels from $offline/wheels failed" >&2; exit 2; }
fi
cd "$repo" || exit 2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
limit=()
[ -n "${BUDGET:-}" ] && limit=(timeout --signal=TERM --kill-after=30 "$BUDGET")
start=$(date +%s)
# --nolock: a run stopped by BUDGET's SIGKILL leaves Snakemake's lock behind, and only one run uses this checkout.
"${limit[@]}" python3 -m snakemake --workflow-profile workflow/profiles/default \
  --config omniglot_mirror="$offline/omniglot" fashion_mirror="$offline/fashion" --nolock "$@"
rc=$?
echo "snakemake exit status $rc after $(( $(date +%s) - start )) s"
if [ "$rc" = 0 ] && [ "${REPORT:-1}" = 1 ]; then
  python3 -m snakemake --workflow-profile workflow/profiles/default --config omniglot_mirror="$offline/omniglot" \
    fashion_mirror="$offline/fashion" \
    --nolock "$@" --report results/report.html || rc=$?
fi
if [ -n "${RESULTS:-}" ]; then
  mkdir -p "$RESULTS"
  # Each run's own tables too, so that a run stopped by BUDGET brings back what its finished jobs made.
  # shellcheck disable=SC2046
  tar -czf "$RESULTS/results.tar.gz" --ignore-failed-read logs reports results/figures results/report.html \
    $(ls results/*.csv results/*/train_log.csv results/*/fewshot_accuracy.csv results/*/nc/*.csv 2>/dev/null) \
    2>/dev/null
  ls -la "$RESULTS"
fi
exit $rc
