#!/usr/bin/env bash
# Build the application image celery-stack/app:VERSION (compose/app) without
# any registry and without network access inside `docker build`:
#   1. the base image celery-stack/app-base (images/app-base.conf) through
#      scripts/build-image.sh: debootstrap + docker import, cached by the hash
#      of its recipe (needs root and debootstrap only when it must be built);
#   2. the wheelhouse .build/wheels: `pip download` on the controller of every
#      pinned, hashed wheel of compose/app/requirements.txt for the base
#      image's CPython (3.13, manylinux x86_64); skipped while the lock and
#      the target are unchanged;
#   3. `docker build` (classic builder: nothing is pulled) of a small context
#      staged in .build/app-context: Dockerfile, requirements.txt, refapp/
#      and the wheelhouse;
#   4. with --save PATH, `docker save | gzip` for hosts without a registry:
#      `docker load -i PATH` there (the archive carries the base layers too).
#
#   scripts/build-app-image.sh VERSION [--save PATH]
#   scripts/build-app-image.sh --lock    # re-resolve requirements.in into requirements.txt
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
app="$here/compose/app"
build="$here/.build"
wheels="$build/wheels"
context="$build/app-context"
image_name=celery-stack/app
base_conf="$here/images/app-base.conf"
# The base image's Python (Debian 13: CPython 3.13) and platform: the lock and
# the wheelhouse are for exactly this target.
py_version=3.13
py_abi=cp313
target_args=(--only-binary=:all: --implementation cp --python-version "$py_version" --abi "$py_abi"
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64)
pip=(python3 -m pip)

die() { echo "build-app-image: $*" >&2; exit 1; }
say() { echo "build-app-image: $*"; }
usage() { die "usage: $0 VERSION [--save PATH] | $0 --lock"; }

# Resolve requirements.in for the target into a fully pinned, hashed lock.
lock() {
  local tmp
  tmp=$(mktemp -d)
  "${pip[@]}" install --quiet --dry-run --ignore-installed --report "$tmp/report.json" \
    --target "$tmp/target" "${target_args[@]}" -r "$app/requirements.in"
  python3 - "$tmp/report.json" "$app/requirements.txt" "$py_version" <<'PY'
import json, sys
report, out, py = sys.argv[1:]
lines = [
    "# The lock of the reference app: every package, transitive ones included, pinned",
    "# with the sha256 of its wheel for CPython " + py + " manylinux x86_64 (the base image,",
    "# images/app-base.conf). Generated from requirements.in by",
    "#   scripts/build-app-image.sh --lock",
    "# Do not edit by hand.",
]
for item in sorted(json.load(open(report))["install"], key=lambda i: i["metadata"]["name"].lower()):
    meta, info = item["metadata"], item["download_info"]
    sha = info["archive_info"]["hashes"]["sha256"]
    lines.append(f"{meta['name'].lower()}=={meta['version']} \\\n    --hash=sha256:{sha}")
open(out, "w").write("\n".join(lines) + "\n")
print(f"build-app-image: locked {len(lines) - 5} packages into {out}")
PY
  rm -rf "$tmp"
}

# Download the wheelhouse unless it already holds this lock for this target.
wheelhouse() {
  local stamp want
  stamp="$wheels/.lock.sha256"
  want=$( (cat "$app/requirements.txt"; echo "${target_args[*]}") | sha256sum | cut -c1-16)
  if [ -r "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    say "wheelhouse $wheels is current (lock $want)"
    return
  fi
  rm -rf "$wheels.tmp"
  mkdir -p "$wheels.tmp"
  # The hashes in the lock make pip verify every wheel (--require-hashes is
  # implied), and refuse any dependency the lock does not pin.
  "${pip[@]}" download --quiet --no-cache-dir "${target_args[@]}" \
    -r "$app/requirements.txt" -d "$wheels.tmp"
  echo "$want" >"$wheels.tmp/.lock.sha256"
  rm -rf "$wheels"
  mv "$wheels.tmp" "$wheels"
  say "wheelhouse $wheels: $(find "$wheels" -name '*.whl' | wc -l) wheels, $(du -sh "$wheels" | cut -f1) (lock $want)"
}

[ $# -ge 1 ] || usage
if [ "$1" = --lock ]; then
  [ $# -eq 1 ] || usage
  lock
  exit
fi
version=$1
shift
save=
while [ $# -gt 0 ]; do
  case $1 in
    --save) [ $# -ge 2 ] || usage; save=$2; shift 2 ;;
    *) usage ;;
  esac
done
[[ $version =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die "VERSION '$version' is not a valid image tag"
command -v docker >/dev/null || die "docker is missing"
[ -r "$app/requirements.txt" ] || die "no lock $app/requirements.txt: run $0 --lock"

t0=$(date +%s)
# shellcheck disable=SC1090
base_name=$(. "$base_conf"; echo "$IMAGE_NAME")
"$here/scripts/build-image.sh" "$base_conf"
# Build FROM the recipe-hash tag that :current points at, so that the label
# records which base recipe the image was built on.
base_id=$(docker image inspect -f '{{.Id}}' "$base_name:current")
base_image=$(docker image ls --no-trunc --format '{{.Repository}}:{{.Tag}} {{.ID}}' "$base_name" \
  | awk -v id="$base_id" '$2 == id && $1 !~ /:current$/ { print $1; exit }')
base_image=${base_image:-$base_name:current}
t1=$(date +%s)

wheelhouse
t2=$(date +%s)

rm -rf "$context"
mkdir -p "$context"
cp "$app/Dockerfile" "$app/requirements.txt" "$context/"
tar -C "$app" --exclude=__pycache__ --exclude='*.pyc' -c refapp | tar -C "$context" -x
cp -al "$wheels" "$context/wheels" 2>/dev/null || cp -a "$wheels" "$context/wheels"
revision=$(git -C "$here" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
[ -z "$(git -C "$here" status --porcelain -- compose/app images/app-base.conf 2>/dev/null)" ] || revision="$revision-dirty"
say "docker build $image_name:$version (base $base_image, revision $revision)"
DOCKER_BUILDKIT=0 docker build \
  --build-arg BASE_IMAGE="$base_image" \
  --build-arg APP_VERSION="$version" \
  --build-arg VCS_REF="$revision" \
  -t "$image_name:$version" "$context" >"$build/app-build.log" 2>&1 \
  || { tail -30 "$build/app-build.log" >&2; die "docker build failed (log: $build/app-build.log)"; }
rm -rf "$context"
t3=$(date +%s)
size=$(docker image inspect -f '{{.Size}}' "$image_name:$version")
say "built $image_name:$version, $(( size / 1000000 )) MB"

if [ -n "$save" ]; then
  mkdir -p "$(dirname "$save")"
  docker save "$image_name:$version" | gzip -6 >"$save.tmp"
  mv "$save.tmp" "$save"
  say "saved $image_name:$version to $save ($(du -h "$save" | cut -f1)); load it with: docker load -i $(basename "$save")"
fi
t4=$(date +%s)
say "times (s): base image $(( t1 - t0 )), wheelhouse $(( t2 - t1 )), docker build $(( t3 - t2 ))$([ -z "$save" ] || echo ", save $(( t4 - t3 ))")"
