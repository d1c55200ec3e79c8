#!/usr/bin/env bash
# `molecule test` for one scenario, one phase at a time, so the time of each
# phase is recorded. Same sequence as the scenario's test_sequence
# (.config/molecule/config.yml): destroy, syntax, create, converge,
# idempotence, check, verify, destroy. The instance is destroyed on failure too.
# check is `ansible-playbook --check --diff` on the converged host: it must
# neither fail nor report a change (changed=0 on every host).
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

for phase in destroy syntax create converge idempotence check verify destroy; do
  echo "== molecule $phase -s $scenario"
  if [ "$phase" = check ]; then
    out=$(mktemp)
    ANSIBLE_DIFF_ALWAYS=1 "$here/timed.sh" "$timings" "molecule $scenario: $phase" molecule check -s "$scenario" | tee "$out"
    changed=$(grep -E '^[^ ]+ +: ok=[0-9]+ +changed=' "$out" | grep -vE 'changed=0 ' || true)
    rm -f "$out"
    if [ -n "$changed" ]; then
      echo "molecule check -s $scenario: the dry run on the converged host reports changes: $changed" >&2
      exit 1
    fi
    continue
  fi
  "$here/timed.sh" "$timings" "molecule $scenario: $phase" molecule "$phase" -s "$scenario"
  # A fresh engine inside the host every run: no images left from the last one.
  if [ "$phase" = destroy ]; then remove_volume; fi
done
trap - EXIT
