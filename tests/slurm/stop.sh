#!/usr/bin/env bash
# Stop the test cluster started by tests/slurm/start.sh: cancel its jobs, kill slurmd, slurmctld
# and munged by the pids in their pid files (never by name), remove the slurm.conf/gres.conf it
# wrote, and delete $METACOLLAPSE_SLURM_DIR unless --keep-state. Idempotent; safe when nothing runs.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=SCRIPTDIR/common.sh
. "$here/common.sh"

keep_state=0
[ "${1:-}" = "--keep-state" ] && keep_state=1

ours=0
grep -qxF "$MC_SLURM_MARKER" "$MC_SLURM_CONF" 2>/dev/null && ours=1
# Cancel what still runs and give slurmd a moment to kill the job steps: slurmstepd processes outlive
# slurmd, so stopping the daemons first could leave a job's processes behind.
if [ $ours -eq 1 ] && mc_pid_alive "$MC_SLURM_DIR/slurmctld.pid" slurmctld; then
  timeout 10 scancel --quiet --partition="$MC_PARTITION" >/dev/null 2>&1 || true
  for _ in $(seq 30); do
    [ -z "$(timeout 5 squeue -h -t running,completing,pending -o %i 2>/dev/null)" ] && break
    sleep 0.5
  done
fi

stop_pid() {  # pidfile program
  local pidfile=$1 prog=$2 pid
  mc_pid_alive "$pidfile" "$prog" || { mc_root rm -f "$pidfile"; return 0; }
  pid=$(cat "$pidfile")
  mc_root kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 100); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
  if [ -d "/proc/$pid" ]; then
    mc_log "$prog ($pid) ignored SIGTERM for 10s, sending SIGKILL"
    mc_root kill -KILL "$pid" 2>/dev/null || true
  fi
  mc_root rm -f "$pidfile"
  mc_log "stopped $prog ($pid)"
}
stop_pid "$MC_SLURM_DIR/slurmd.pid" slurmd
stop_pid "$MC_SLURM_DIR/slurmctld.pid" slurmctld
stop_pid "$MC_SLURM_DIR/munged.pid" munged

if [ $ours -eq 1 ]; then
  mc_root rm -f "$MC_SLURM_CONF"
  grep -qxF "$MC_SLURM_MARKER" "$MC_GRES_CONF" 2>/dev/null && mc_root rm -f "$MC_GRES_CONF"
fi
if [ $keep_state -eq 0 ] && [ -d "$MC_SLURM_DIR" ]; then
  mc_root rm -rf "$MC_SLURM_DIR"
fi
exit 0
