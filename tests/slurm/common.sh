# shellcheck shell=bash disable=SC2034
# Shared settings for the throw-away one-node SLURM cluster used by tests/test_slurm.py.
# Sourced by install.sh, start.sh and stop.sh; not meant to be run on its own.
#
# Everything the cluster writes (pid files, logs, state, the munge key and socket) lives in
# $METACOLLAPSE_SLURM_DIR. The only file outside it is the SLURM config itself: SLURM's client
# commands (sbatch, squeue, and the srun that the Snakemake jobstep runs inside each job with a
# scrubbed SLURM_* environment) only find it at the compiled-in path, /etc/slurm/slurm.conf.
# start.sh refuses to overwrite a slurm.conf that it did not write itself (marker line below).

MC_SLURM_DIR=${METACOLLAPSE_SLURM_DIR:-/tmp/metacollapse-slurm}
MC_SLURM_ETC=${METACOLLAPSE_SLURM_ETC:-/etc/slurm}
MC_SLURM_CONF="$MC_SLURM_ETC/slurm.conf"
MC_GRES_CONF="$MC_SLURM_ETC/gres.conf"
MC_SLURM_MARKER="# metacollapse-test-cluster: written by tests/slurm/start.sh, removed by tests/slurm/stop.sh"
MC_NODE=localhost
MC_PARTITION=${METACOLLAPSE_SLURM_PARTITION:-debug}
MC_CTLD_PORT=${METACOLLAPSE_SLURMCTLD_PORT:-6817}
MC_SLURMD_PORT=${METACOLLAPSE_SLURMD_PORT:-6818}
# What the node announces. slurmd is told to trust these numbers (SlurmdParameters=config_overrides)
# instead of the hardware, so the profile's production requests (8 CPUs, 32 GB, a GPU) are
# schedulable on a 2-core CI runner; jobs then simply share the real cores.
MC_NODE_CPUS=${METACOLLAPSE_SLURM_CPUS:-16}
MC_NODE_MEM_MB=${METACOLLAPSE_SLURM_MEM_MB:-65536}
MC_NODE_GPUS=${METACOLLAPSE_SLURM_GPUS:-1}

MC_MUNGE_SOCKET="$MC_SLURM_DIR/munge/munge.socket"

mc_log() { printf '[slurm-test] %s\n' "$*" >&2; }
mc_die() { mc_log "ERROR: $*"; exit 1; }

# Run a command as root: directly when we are root, else through passwordless sudo.
mc_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi
}

# Is the process in pid file $1 alive and running program $2?
mc_pid_alive() {
  local pidfile=$1 prog=$2 pid
  [ -s "$pidfile" ] || return 1
  pid=$(cat "$pidfile" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
  grep -q -- "$prog" "/proc/$pid/comm" 2>/dev/null || grep -qa -- "$prog" "/proc/$pid/cmdline" 2>/dev/null
}
