#!/usr/bin/env bash
# A single-node Slurm on this machine, for tests and for trying `run-experiment --slurm`.
#
#   scripts/slurm-local.sh install        apt-get install slurmctld slurmd slurm-client munge (root)
#   scripts/slurm-local.sh start [DIR]    write DIR/slurm.conf, start munged, slurmctld, slurmd
#   scripts/slurm-local.sh stop [DIR]     stop the three daemons started in DIR
#
# DIR defaults to /tmp/decomp-slurm. Everything lives there (config, state, logs, munge key
# and socket); nothing under /etc is touched. Clients need the config: after `start`, run
#   export SLURM_CONF=DIR/slurm.conf
# Ports: $SLURM_LOCAL_PORT (slurmctld, default 6817) and the next one (slurmd). One node,
# one partition `local` with $SLURM_LOCAL_CPUS CPUs (default 2). Exit status 3: Slurm or
# munge is not installed.
set -euo pipefail

cmd=${1:-}
dir=${2:-/tmp/decomp-slurm}

need() {
  local missing=()
  for b in munged slurmctld slurmd sbatch squeue scontrol; do
    command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] || missing+=("$b")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "slurm-local: not installed: ${missing[*]} (Debian: scripts/slurm-local.sh install)" >&2
    exit 3
  fi
}

pidof_file() { [ -f "$1" ] && cat "$1" 2>/dev/null || true; }

stop() {
  for d in slurmd slurmctld munged; do
    local pid
    pid=$(pidof_file "$dir/$d.pid")
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$dir/$d.pid"
  done
}

case "$cmd" in
  install)
    if command -v slurmctld >/dev/null 2>&1 || [ -x /usr/sbin/slurmctld ]; then
      echo "slurm-local: already installed"; exit 0
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null ||
      { apt-get update >/dev/null && apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null; }
    ;;
  start)
    export PATH="$PATH:/usr/sbin:/sbin"
    need
    stop
    mkdir -p "$dir/state" "$dir/spool" "$dir/munge"
    chmod 700 "$dir/munge"
    port=${SLURM_LOCAL_PORT:-6817}
    cpus=${SLURM_LOCAL_CPUS:-2}
    host=$(hostname -s)
    mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
    user=$(id -un)
    [ -f "$dir/munge/munge.key" ] || { dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 2>/dev/null; chmod 400 "$dir/munge/munge.key"; }
    munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
      --pid-file="$dir/munged.pid" --log-file="$dir/munged.log" --seed-file="$dir/munge/munge.seed"
    cat >"$dir/slurm.conf" <<CONF
ClusterName=decomp-local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=$user
SlurmdUser=$user
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
ReturnToService=2
MinJobAge=600
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
    export SLURM_CONF="$dir/slurm.conf"
    slurmctld -f "$SLURM_CONF"
    slurmd -f "$SLURM_CONF"
    # Ready when the node takes jobs.
    for _ in $(seq 100); do
      state=$(sinfo -h -n "$host" -o %T 2>/dev/null || true)
      case "$state" in idle|mixed|allocated) echo "slurm-local: up in $dir (node $host, $cpus CPUs): export SLURM_CONF=$SLURM_CONF"; exit 0;; esac
      sleep 0.2
    done
    echo "slurm-local: the node did not come up (state '${state:-none}'); logs: $dir/slurmctld.log $dir/slurmd.log" >&2
    tail -5 "$dir/slurmctld.log" "$dir/slurmd.log" >&2 || true
    stop
    exit 1
    ;;
  stop)
    stop
    echo "slurm-local: stopped ($dir)"
    ;;
  *)
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
