#!/usr/bin/env bash
# `molecule test` for one scenario, one phase at a time, so the time of each
# phase is recorded. Same sequence as the scenario's test_sequence
# (.config/molecule/config.yml): destroy, syntax, create, converge,
# idempotence, verify, destroy. The instance is destroyed on failure too.
#   scripts/molecule-test.sh SCENARIO [TIMINGS_FILE]
set -euo pipefail
scenario=$1
timings=${2:-.build/timings.txt}
here=$(cd "$(dirname "$0")" && pwd)

# The scenario's Docker-in-host volume (molecule/<scenario>/molecule.yml), if any.
volume="celery-stack-molecule-$scenario-docker"
remove_volume() { docker volume rm --force "$volume" >/dev/null 2>&1 || true; }
cleanup() { molecule destroy -s "$scenario" >/dev/null 2>&1 || true; remove_volume; }
trap cleanup EXIT

for phase in destroy syntax create converge idempotence verify destroy; do
  echo "== molecule $phase -s $scenario"
  "$here/timed.sh" "$timings" "molecule $scenario: $phase" molecule "$phase" -s "$scenario"
  # A fresh engine inside the host every run: no images left from the last one.
  if [ "$phase" = destroy ]; then remove_volume; fi
done
trap - EXIT
