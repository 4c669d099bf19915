#!/usr/bin/env bash
# Install SLURM (controller, node daemon, client tools) and MUNGE from the distribution's packages,
# only if they are missing. Debian/Ubuntu (apt) only. Idempotent; talks to nothing but the
# configured apt mirror.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=SCRIPTDIR/common.sh
. "$here/common.sh"

need=()
command -v slurmctld >/dev/null 2>&1 || need+=(slurmctld)
command -v slurmd >/dev/null 2>&1 || need+=(slurmd)
command -v sbatch >/dev/null 2>&1 || need+=(slurm-client)
command -v munged >/dev/null 2>&1 || need+=(munge)
if [ ${#need[@]} -eq 0 ]; then
  mc_log "SLURM and MUNGE already installed: $(slurmctld -V)"
  exit 0
fi
command -v apt-get >/dev/null 2>&1 || mc_die "missing ${need[*]} and no apt-get to install them"

export DEBIAN_FRONTEND=noninteractive
# Only refresh the package lists when apt does not know the packages yet.
if ! apt-cache show slurmd >/dev/null 2>&1; then
  mc_log "apt-get update"
  mc_root apt-get update -q >/dev/null
fi
mc_log "installing ${need[*]}"
# Installing the packages must not start their services (no init system in containers anyway):
# a policy-rc.d that denies every start, removed again afterwards if we created it.
made_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  mc_root sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d'
  made_policy=1
fi
trap '[ $made_policy -eq 1 ] && mc_root rm -f /usr/sbin/policy-rc.d' EXIT
mc_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
  slurmctld slurmd slurm-client munge >/dev/null
mc_log "installed: $(slurmctld -V)"
