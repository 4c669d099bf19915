#!/usr/bin/env bash
# Start a one-node SLURM cluster on localhost for tests: munged, slurmctld and slurmd, run as plain
# background daemons (no systemd), with their pid/log/state files under $METACOLLAPSE_SLURM_DIR
# (default /tmp/metacollapse-slurm). The node advertises one fake GPU as a generic resource
# (gres gpu:1 backed by /dev/null), so jobs submitted with `--gpus=1` schedule on a CPU-only machine,
# one at a time, and run on the CPU. Writes /etc/slurm/slurm.conf and gres.conf (see common.sh).
#
# Idempotent: when the cluster is already up it only checks that the node is idle and exits 0.
# Usage: tests/slurm/start.sh [--no-install] [--timeout SECONDS]
# Stop it with tests/slurm/stop.sh.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=SCRIPTDIR/common.sh
. "$here/common.sh"

install=1
timeout_s=60
while [ $# -gt 0 ]; do
  case $1 in
    --no-install) install=0 ;;
    --timeout) timeout_s=$2; shift ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) mc_die "unknown argument $1" ;;
  esac
  shift
done

[ "$(id -u)" -eq 0 ] || sudo -n true 2>/dev/null || mc_die "needs root (or passwordless sudo)"
if [ $install -eq 1 ]; then "$here/install.sh"; fi
for prog in munged slurmctld slurmd sinfo; do
  command -v "$prog" >/dev/null 2>&1 || mc_die "$prog not found (run tests/slurm/install.sh)"
done

node_state() { sinfo -h -N -n "$MC_NODE" -o '%T' 2>/dev/null | head -n 1; }

wait_idle() {
  local deadline=$((SECONDS + timeout_s)) st=""
  while [ $SECONDS -lt $deadline ]; do
    st=$(node_state || true)
    case $st in
      idle|mixed|allocated) mc_log "node $MC_NODE is $st"; return 0 ;;
    esac
    sleep 0.5
  done
  mc_log "node $MC_NODE did not become idle within ${timeout_s}s (state: '${st:-none}')"
  for f in munged.log slurmctld.log slurmd.log; do
    [ -f "$MC_SLURM_DIR/$f" ] && { mc_log "--- tail of $f"; tail -n 20 "$MC_SLURM_DIR/$f" >&2; }
  done
  return 1
}

all_up() {
  mc_pid_alive "$MC_SLURM_DIR/munged.pid" munged &&
    mc_pid_alive "$MC_SLURM_DIR/slurmctld.pid" slurmctld &&
    mc_pid_alive "$MC_SLURM_DIR/slurmd.pid" slurmd
}

if all_up && grep -qxF "$MC_SLURM_MARKER" "$MC_SLURM_CONF" 2>/dev/null; then
  mc_log "cluster already running (state in $MC_SLURM_DIR)"
  wait_idle
  exit 0
fi

# Half-started leftovers (e.g. a killed test run): stop what is ours, then start cleanly.
"$here/stop.sh" --keep-state >/dev/null 2>&1 || true

if [ -e "$MC_SLURM_CONF" ] && ! grep -qxF "$MC_SLURM_MARKER" "$MC_SLURM_CONF"; then
  mc_die "$MC_SLURM_CONF exists and was not written by this script; refusing to overwrite a real SLURM setup"
fi

mc_root mkdir -p "$MC_SLURM_DIR"/{munge,ctld,spool} "$MC_SLURM_ETC"
# munge clients of any user must reach the socket; the key itself stays 0400 root.
mc_root chmod 0755 "$MC_SLURM_DIR" "$MC_SLURM_DIR/munge"

# --- munge: a private key and socket, so a system munged (if any) is left alone
if [ ! -s "$MC_SLURM_DIR/munge/munge.key" ]; then
  mc_root dd if=/dev/urandom of="$MC_SLURM_DIR/munge/munge.key" bs=1024 count=1 status=none
fi
mc_root chmod 0400 "$MC_SLURM_DIR/munge/munge.key"
mc_root munged --force \
  --socket="$MC_MUNGE_SOCKET" \
  --key-file="$MC_SLURM_DIR/munge/munge.key" \
  --pid-file="$MC_SLURM_DIR/munged.pid" \
  --log-file="$MC_SLURM_DIR/munged.log" \
  --seed-file="$MC_SLURM_DIR/munge/munged.seed"
for _ in $(seq 50); do [ -S "$MC_MUNGE_SOCKET" ] && break; sleep 0.1; done
munge -n -S "$MC_MUNGE_SOCKET" | unmunge -S "$MC_MUNGE_SOCKET" >/dev/null ||
  mc_die "munged is not answering on $MC_MUNGE_SOCKET (see $MC_SLURM_DIR/munged.log)"

# --- slurm.conf / gres.conf
tmp=$(mktemp)
cat >"$tmp" <<CONF
$MC_SLURM_MARKER
# One node on localhost, one partition, no accounting database, no cgroups.
ClusterName=metacollapse-test
SlurmctldHost=$MC_NODE(127.0.0.1)
SlurmctldPort=$MC_CTLD_PORT
SlurmdPort=$MC_SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MC_MUNGE_SOCKET
StateSaveLocation=$MC_SLURM_DIR/ctld
SlurmdSpoolDir=$MC_SLURM_DIR/spool
SlurmctldPidFile=$MC_SLURM_DIR/slurmctld.pid
SlurmdPidFile=$MC_SLURM_DIR/slurmd.pid
SlurmctldLogFile=$MC_SLURM_DIR/slurmctld.log
SlurmdLogFile=$MC_SLURM_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Finished jobs stay visible to squeue for 10 minutes: without an accounting database the
# Snakemake SLURM plugin reads job states from squeue (--slurm-status-command squeue).
MinJobAge=600
ReturnToService=2
SlurmdTimeout=300
InactiveLimit=0
KillWait=5
# Trust the numbers below instead of the hardware (see tests/slurm/common.sh).
SlurmdParameters=config_overrides
GresTypes=gpu
NodeName=$MC_NODE NodeAddr=127.0.0.1 CPUs=$MC_NODE_CPUS RealMemory=$MC_NODE_MEM_MB Gres=gpu:$MC_NODE_GPUS State=UNKNOWN
PartitionName=$MC_PARTITION Nodes=$MC_NODE Default=YES MaxTime=INFINITE State=UP
CONF
mc_root install -m 0644 "$tmp" "$MC_SLURM_CONF"
# slurmd drops a GPU without a device file ("Removing file-less GPU"), so each fake GPU gets one:
# /dev/null for a single GPU, else character devices with /dev/null's numbers made in the state dir.
# No cgroup device constraint is configured, so nothing is actually bound or hidden.
if [ "$MC_NODE_GPUS" -eq 1 ]; then
  gpu_files=/dev/null
else
  mc_root mkdir -p "$MC_SLURM_DIR/dev"
  for i in $(seq 0 $((MC_NODE_GPUS - 1))); do
    [ -c "$MC_SLURM_DIR/dev/fakegpu$i" ] || mc_root mknod "$MC_SLURM_DIR/dev/fakegpu$i" c 1 3
  done
  gpu_files="$MC_SLURM_DIR/dev/fakegpu[0-$((MC_NODE_GPUS - 1))]"
fi
cat >"$tmp" <<CONF
$MC_SLURM_MARKER
# Fake GPUs for a CPU-only node: jobs asking for --gpus=N / --gres=gpu:N are scheduled against
# this count and then run on the CPU.
AutoDetect=off
NodeName=$MC_NODE Name=gpu File=$gpu_files
CONF
mc_root install -m 0644 "$tmp" "$MC_GRES_CONF"
rm -f "$tmp"

# --- daemons. -c / -i: start with a clean job table (a test cluster keeps no jobs across restarts)
mc_root slurmctld -c -i
mc_root slurmd -N "$MC_NODE"
for _ in $(seq 50); do
  mc_pid_alive "$MC_SLURM_DIR/slurmctld.pid" slurmctld && mc_pid_alive "$MC_SLURM_DIR/slurmd.pid" slurmd && break
  sleep 0.2
done
wait_idle
mc_log "cluster up: $(sinfo -h -o '%P %a %D %T %G' | tr '\n' ' ')"
