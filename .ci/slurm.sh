#!/usr/bin/env bash
# Start a one-node SLURM cluster on this machine, for the tests in tests/test_slurm.py:
# install Debian's slurmctld, slurmd, slurm-client and munge (apt, as root), write a slurm.conf
# with one node (this host's CPUs and memory, no GPU) in one partition `cpu`, start munged,
# slurmctld and slurmd, and wait until a first job has run. Idempotent: does nothing when the
# cluster already answers. Logs and state are under $SLURM_STATE (default /tmp/phaselab-slurm).
#   bash .ci/slurm.sh && sinfo
set -euo pipefail
STATE=${SLURM_STATE:-/tmp/phaselab-slurm}
start=$(date +%s)
say() { echo "slurm: $* ($(( $(date +%s) - start )) s)"; }

if command -v sinfo >/dev/null && sinfo -h -o %T 2>/dev/null | grep -q idle; then
  say "already up: $(sinfo -h -o '%P %N %T')"; exit 0
fi
if [ "$(id -u)" -ne 0 ]; then echo "slurm: must run as root (installs packages, starts daemons)" >&2; exit 1; fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
    || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null \
    || { apt-get update -q >/dev/null
         apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null; }
  say "installed $(dpkg-query -W -f '${Version}' slurmctld)"
fi

# munge: the key (the package's postinst usually makes one) and its runtime directory.
[ -s /etc/munge/munge.key ] || runuser -u munge -- mungekey --create
install -d -o munge -g munge -m 0755 /run/munge
pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged

host=$(hostname -s)
cpus=$(nproc)
mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 512 ))
for daemon in slurmctld slurmd; do  # a previous start of this script
  [ -f "$STATE/$daemon.pid" ] && kill "$(cat "$STATE/$daemon.pid")" 2>/dev/null && sleep 1
done
rm -rf "$STATE"
mkdir -p "$STATE/ctld" "$STATE/d" /etc/slurm
cat > /etc/slurm/slurm.conf <<EOF
# One node, no GPU, written by .ci/slurm.sh.
ClusterName=phaselab
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
# cred_expire is also how long a requeued job waits before it may start again (default 120 s).
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# Test pending jobs every 2 s (default 60 s, 30 s for backfill): a requeued job starts promptly.
SchedulerParameters=sched_interval=2,bf_interval=2
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
MinJobAge=60
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=cpu Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
slurmctld
slurmd
for _ in $(seq 60); do
  sinfo -h -o %T 2>/dev/null | grep -q idle && break
  sleep 1
done
sinfo -h -o %T | grep -q idle || { echo "slurm: the node never became idle; see $STATE/*.log" >&2; exit 1; }
out=$(sbatch --parsable --wait --output="$STATE/first.out" --wrap="hostname") \
  || { echo "slurm: a first job failed; see $STATE/*.log" >&2; exit 1; }
say "up: partition cpu, node $host ($cpus CPUs, ${mem_mb} MB), first job $out ran on $(cat "$STATE/first.out")"
