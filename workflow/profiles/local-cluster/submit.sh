#!/usr/bin/env bash
# Submit a Snakemake job script "locally": run it detached, with its output in a log next to the
# job script's own folder, and print the PID as the job id.
set -euo pipefail
jobscript="$1"
log="${jobscript%.sh}.out"
nohup bash "$jobscript" >"$log" 2>&1 </dev/null &
echo $!
