#!/usr/bin/env bash
# One call on one GPU machine, inside BUDGET seconds: the training-step tests, bench_training, bench_study, then one
# study config end to end (run.sh, stopped at the budget and resumable by calling again), packed into at most
# 8 files of at most 15 MiB for machines that return only a few small files.
#   OFFLINE=.offline RESULTS=/somewhere BUDGET=560 STUDY=config/studies/full_protocol.yaml tools/offline_gpu/study.sh
#   PRESET=quick BUDGET=300 STUDY=config/quick.yaml ...   # rehearsal on a CPU: tiny tests and benches
# Extra arguments go to Snakemake (e.g. `--resources gpu=4` to try more GPU slots than the profile's).
# SKIP="tests bench_training bench_study" leaves those out (a second call that only continues the study).
# Writes to RESULTS: env.txt, tests.txt, bench_training.txt, bench_study.txt, study.log, and results.tar.gz (run.sh's
# pack: logs, each run's and the aggregated tables, figures; the HTML report only with REPORT=1, as it is about
# 10 MB; plus tools/summarize_study.py's summary when the study finished, the Snakemake log and nvidia-smi dmon
# over the study), split into results.tar.gz.0, .1, ... if it is over 15 MiB.
set -uo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
: "${RESULTS:?set RESULTS to the folder that receives the packed files}"
budget=${BUDGET:-560}
preset=${PRESET:-full}
study=${STUDY:-config/studies/full_protocol.yaml}
deadline=$(( $(date +%s) + budget ))
mkdir -p "$RESULTS"
RESULTS=$(cd "$RESULTS" && pwd)
OFFLINE=$(cd "${OFFLINE:-$repo/.offline}" && pwd) || exit 2
export OFFLINE
cd "$repo" || exit 2
# The checkout's code, not the wheel's (the benches and tests import it directly; the rules do so anyway).
export PYTHONPATH=$repo/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
left() { echo $(( deadline - $(date +%s) )); }
# step NAME SECONDS COMMAND...: run COMMAND into RESULTS/NAME.txt for at most SECONDS (and never past the budget
# minus what the study and the packing need).
step() {
  local name=$1 cap=$2
  shift 2
  local limit=$(( $(left) - reserve ))
  (( cap < limit )) && limit=$cap
  case " ${SKIP:-} " in *" $name "*) echo "skipped: SKIP=$SKIP" >"$RESULTS/$name.txt"; return ;; esac
  (( limit > 0 )) || { echo "skipped: no time left in the budget" >"$RESULTS/$name.txt"; return; }
  echo "== $name (at most ${limit} s): $*"
  timeout --signal=TERM --kill-after=10 "$limit" "$@" >"$RESULTS/$name.txt" 2>&1
  echo "== $name exit status $? after $(( $(date +%s) - deadline + budget )) s of the budget"
}

device=$(python3 -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')
reserve=$(( budget / 2 ))  # kept for the study and the packing while the tests and benches run
if [ "$preset" = quick ]; then
  tests=(-k "protonet-options0-1-fp32 or compile or shape")
  training=(--backbones conv4 --episodes 1 --rounds 1 --warmup 1 --embed-images 1024 --no-baseline)
  studying=(--runs 2 --episodes 2 --warmup 1)
else
  tests=()
  training=(--episodes 30 --rounds 3 --no-baseline)
  studying=(--runs 2 4 --episodes 300 --compile auto none reduce-overhead --precision auto fp32)
fi

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || true
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
  grep -m1 'model name' /proc/cpuinfo
  echo "cpus $(nproc)"
  df -h . | tail -1
  echo "preset $preset, budget $budget s, study $study, device $device, snakemake arguments: $*"
  git log -1 --format='commit %H %s' 2>/dev/null || true
  git status --short 2>/dev/null | head -20
} >"$RESULTS/env.txt" 2>&1
cat "$RESULTS/env.txt"

step tests 100 python3 -m pytest tests/test_step.py -q -p no:cacheprovider "${tests[@]}"
step bench_training 80 python3 bench/bench_training.py --device "$device" --mirror "$OFFLINE/omniglot" \
  "${training[@]}"
step bench_study 200 python3 bench/bench_study.py --device "$device" --mirror "$OFFLINE/omniglot" \
  "${studying[@]}"

# The study: whatever is left, less 40 s for packing. run.sh stops Snakemake at its BUDGET and packs.
study_budget=$(( $(left) - 40 ))
pack=$(mktemp -d)
dmon=
if command -v nvidia-smi >/dev/null && [ "$device" = cuda ]; then
  nvidia-smi dmon -s um -d 5 >"$pack/nvidia_smi_dmon.txt" 2>&1 &
  dmon=$!
fi
if (( study_budget > 30 )); then
  echo "== study $study (at most ${study_budget} s)"
  BUDGET=$study_budget RESULTS=$pack REPORT=${REPORT:-0} tools/offline_gpu/run.sh --configfile "$study" "$@" >"$RESULTS/study.log" 2>&1
  rc=$?
else
  echo "skipped: ${study_budget} s left for the study" >"$RESULTS/study.log"
  rc=1
fi
[ -n "$dmon" ] && kill "$dmon" 2>/dev/null
echo "== study exit status $rc after $(( $(date +%s) - deadline + budget )) s of the budget"

# One archive: run.sh's pack with the summary (finished studies), the Snakemake log and dmon added.
extra=$(mktemp -d)
[ -f "$pack/results.tar.gz" ] && tar -xzf "$pack/results.tar.gz" -C "$extra"
[ "${REPORT:-0}" = 1 ] || rm -f "$extra/results/report.html"  # one an earlier call made
if [ "$rc" = 0 ]; then  # its figures are copies of results/figures
  python3 tools/summarize_study.py . "$extra/summary" >"$extra/summary.log" 2>&1
  rm -rf "$extra/summary/figures"
fi
newest=$(ls -t .snakemake/log/*.snakemake.log 2>/dev/null | head -1)
[ -n "$newest" ] && cp "$newest" "$extra/snakemake.log"
[ -f "$pack/nvidia_smi_dmon.txt" ] && cp "$pack/nvidia_smi_dmon.txt" "$extra/"
cp "$RESULTS"/*.txt "$RESULTS/study.log" "$extra/" 2>/dev/null
tar -czf "$RESULTS/results.tar.gz" -C "$extra" .
rm -rf "$pack" "$extra"
if (( $(stat -c %s "$RESULTS/results.tar.gz") > 15 * 1024 * 1024 )); then
  split -b 15m -d -a 1 "$RESULTS/results.tar.gz" "$RESULTS/results.tar.gz." && rm "$RESULTS/results.tar.gz"
  echo "results.tar.gz split into parts: cat results.tar.gz.* > results.tar.gz"
fi
ls -la "$RESULTS"
echo "finished after $(( $(date +%s) - deadline + budget )) s of a ${budget} s budget"
exit $rc
