#!/usr/bin/env bash
# Stops the daemons tests/slurm/start.sh STATE_DIR started (by the pids it recorded), nothing else,
# and removes the /etc/slurm/slurm.conf it wrote for STATE_DIR.
set -uo pipefail
state=$(realpath -m "${1:?usage: $0 STATE_DIR}")
# jobs still queued or running in this private cluster (a test that failed half-way) go first: their
# processes belong to slurmstepd, which outlives slurmd
if [[ -f "$state/slurmctld.started" ]] && kill -0 "$(cat "$state/slurmctld.started")" 2>/dev/null; then
    jobs=$(squeue -h -o %i 2>/dev/null)
    if [[ -n "$jobs" ]]; then
        scancel $jobs
        for _ in $(seq 50); do [[ -z "$(squeue -h -o %i 2>/dev/null)" ]] && break; sleep 0.2; done
    fi
fi
for daemon in slurmd slurmctld munged; do
    file="$state/$daemon.started"
    [[ -f "$file" ]] || continue
    pid=$(cat "$file")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    fi
    rm -f "$file"
done
conf=/etc/slurm/slurm.conf
if [[ -f "$conf" ]] && [[ "$(head -n 1 "$conf")" == "# written by tests/slurm/start.sh $state" ]]; then
    rm -f "$conf"
fi
