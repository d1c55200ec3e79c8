#!/usr/bin/env bash
# `molecule test` for one scenario, one phase at a time, so the time of each
# phase is recorded. Same sequence as the scenario's test_sequence
# (.config/molecule/config.yml: destroy, syntax, create, converge,
# idempotence, check, verify, destroy; a scenario may set its own). The instance is destroyed on failure too.
# check is `ansible-playbook --check --diff` on the converged host: it must
# neither fail nor report a change (changed=0 on every host).
#   scripts/molecule-test.sh SCENARIO [TIMINGS_FILE]
set -euo pipefail
scenario=$1
timings=${2:-.build/timings.txt}
here=$(cd "$(dirname "$0")" && pwd)

# The scenario's Docker-in-host volumes (molecule/<scenario>/molecule.yml), if
# any: celery-stack-molecule-<scenario>-docker, or one per host with a suffix.
remove_volume() {
  docker volume ls -q --filter "name=^celery-stack-molecule-$scenario-docker" | while read -r volume; do
    docker volume rm --force "$volume" >/dev/null 2>&1 || true
  done
}
cleanup() { molecule destroy -s "$scenario" >/dev/null 2>&1 || true; remove_volume; }
trap cleanup EXIT

# The scenario's own test_sequence when its molecule.yml sets one (cluster
# leaves out check to keep `make test` within its hour), else the shared one.
phases=$(python - "$here/../molecule/$scenario/molecule.yml" <<'PY'
import sys, yaml
config = yaml.safe_load(open(sys.argv[1])) or {}
sequence = (config.get("scenario") or {}).get("test_sequence")
print(" ".join(sequence or ["destroy", "syntax", "create", "converge", "idempotence", "check", "verify", "destroy"]))
PY
)

for phase in $phases; do
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
