#!/usr/bin/env bash
# A one-node SLURM 22.05 cluster on this machine, for tests/test_slurm.py and for trying
# workflow/profiles/slurm by hand (docs/cluster.md). Needs root and Debian's packages.
#
#   tests/slurm/start.sh STATE_DIR    # installs slurm-wlm + munge if missing, starts munged,
#                                     # slurmctld and slurmd, waits until `sinfo` shows the node idle
#   tests/slurm/stop.sh STATE_DIR     # stops what start.sh started, nothing else
#
# The node has this machine's CPUs and memory; one partition `main` (the default) with no time
# limit. The configuration is written to /etc/slurm/slurm.conf, where every SLURM command looks for
# it (inside a job too: the executor plugin's job step drops SLURM_* variables, SLURM_CONF included,
# before its srun); a slurm.conf that start.sh did not write is left alone and start.sh stops.
# No cgroups (proctrack/pgid: a job is its process groups, so a cancelled job's Snakemake, orphaned
# when srun dies first, is still found, as proctrack/linuxproc's parent chain does not; task/none) and
# no accounting database: the executor plugin's `squeue` status mode needs neither, and finished jobs stay visible to squeue and
# `scontrol show job` for MinJobAge (1 h). Daemons listen on 127.0.0.1 only (ports 6817/6818).
set -euo pipefail

state=$(realpath -m "${1:?usage: $0 STATE_DIR}")
mkdir -p "$state"/{spool,slurmd,log}

missing=()
command -v munged >/dev/null || missing+=(munge)
command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null || missing+=(slurm-wlm)
if ((${#missing[@]})); then
    echo "installing ${missing[*]} from Debian's packages" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$state/log/apt.log"
fi

node=$(hostname -s)
cpus=$(nproc)
# the memory slurmd will find, less 5% for the system: a job asking for more is refused by sbatch
mem_mb=$(awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.95}' /proc/meminfo)
conf=/etc/slurm/slurm.conf
marker="# written by tests/slurm/start.sh"
if [[ -e "$conf" ]] && ! grep -qF "$marker" "$conf"; then
    echo "$conf exists and was not written by $0: a SLURM is configured here already; not touching it" >&2
    exit 1
fi
mkdir -p /etc/slurm
cat >"$conf.tmp" <<CONF
$marker $state
ClusterName=esta
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$state/spool
SlurmdSpoolDir=$state/slurmd
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd.log
ProctrackType=proctrack/pgid
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
ReturnToService=2
MinJobAge=3600
KillWait=5
SlurmctldTimeout=30
SlurmdTimeout=30
MpiDefault=none
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=main Nodes=$node Default=YES MaxTime=INFINITE State=UP
CONF
mv "$conf.tmp" "$conf"

# munged: reuse one that runs (its socket answers), else start our own and remember it
if ! munge -n </dev/null >/dev/null 2>&1; then
    mkdir -p /run/munge && chown munge:munge /run/munge
    # as the munge user (its key and seed folders are its own); setpriv execs, so $! is munged
    setpriv --reuid=munge --regid=munge --init-groups munged -F >"$state/log/munged.log" 2>&1 &
    echo $! >"$state/munged.started"
    for _ in $(seq 50); do munge -n </dev/null >/dev/null 2>&1 && break; sleep 0.1; done
    munge -n </dev/null >/dev/null || { echo "munged did not start: $state/log/munged.log" >&2; cat "$state/log/munged.log" >&2; exit 1; }
fi

for daemon in slurmctld slurmd; do
    if [[ -f "$state/$daemon.started" ]] && kill -0 "$(cat "$state/$daemon.started")" 2>/dev/null; then
        echo "$daemon already runs (pid $(cat "$state/$daemon.started"))" >&2
        continue
    fi
    "$daemon" -D >>"$state/log/$daemon.out" 2>&1 &
    echo $! >"$state/$daemon.started"
done

for _ in $(seq 120); do
    if [[ "$(sinfo -h -n "$node" -o %t 2>/dev/null)" == idle ]]; then
        echo "SLURM up: node $node ($cpus CPUs, $mem_mb MB), partition main ($conf)" >&2
        exit 0
    fi
    sleep 0.5
done
echo "the node did not become idle in 60 s; sinfo says: $(sinfo -h -o '%n %t %E' 2>&1)" >&2
tail -n 20 "$state/log/slurmctld.log" "$state/log/slurmd.log" >&2 || true
exit 1
