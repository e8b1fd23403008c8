#!/usr/bin/env bash
# The GPU benchmark of issue 25 (bench/gpu.py says what it measures): bash bench/gpu.sh [--dry] OUT_DIR
# Uses the repository's .venv where there is one, else python3 (a lent GPU machine's); esta is imported
# from this checkout, so nothing needs installing there.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="$root/.venv/bin/python"
[ -x "$python" ] || python=python3
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$python" "$root/bench/gpu.py" "$@"
