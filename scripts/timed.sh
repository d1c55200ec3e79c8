#!/usr/bin/env bash
# Run a command and append "<seconds>  <label>" to a timings file.
#   scripts/timed.sh FILE LABEL COMMAND [ARGS...]
set -uo pipefail
file=$1 label=$2
shift 2
mkdir -p "$(dirname "$file")"
start=$(date +%s)
"$@"
rc=$?
printf '%6ds  %s%s\n' "$(( $(date +%s) - start ))" "$label" "$([ $rc -eq 0 ] || echo "  (FAILED, exit $rc)")" >>"$file"
exit $rc
