#!/usr/bin/env bash
# Build a systemd host image for Molecule and the local host without any
# registry: debootstrap a minimal Debian root file system and `docker import`
# it, plus the few harness files in images/rootfs. The tag carries a hash
# of the recipe, so an image is rebuilt only when its recipe changes; `<name>:current` always points at the newest build.
#
#   scripts/build-image.sh images/debian13.conf [images/debian12.conf ...]
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
workdir="$here/.build/images"

die() { echo "build-image: $*" >&2; exit 1; }

build_one() {
  local conf=$1 IMAGE_NAME SUITE MIRROR INCLUDE
  [ -r "$conf" ] || die "no recipe $conf"
  # shellcheck disable=SC1090
  . "$conf"
  local hash tag rootfs start
  hash=$( (cat "$conf" "$here/scripts/build-image.sh"; tar -C "$here/images/rootfs" --sort=name --mtime=@0 --owner=0 --group=0 -c .) \
    | sha256sum | cut -c1-12)
  tag="$IMAGE_NAME:$hash"
  if docker image inspect "$tag" >/dev/null 2>&1; then
    docker tag "$tag" "$IMAGE_NAME:current"
    echo "build-image: $tag is cached (recipe unchanged), tagged $IMAGE_NAME:current"
    return
  fi
  command -v debootstrap >/dev/null || die "debootstrap is missing: apt-get install debootstrap (as root)"
  [ "$(id -u)" -eq 0 ] || die "debootstrap needs root to build $tag"
  start=$(date +%s)
  local slot=${IMAGE_NAME//\//_}
  rootfs="$workdir/$slot"
  rm -rf "$rootfs"
  mkdir -p "$rootfs"
  echo "build-image: debootstrap $SUITE into $rootfs"
  debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$rootfs" "$MIRROR" \
    >"$workdir/$slot.log" 2>&1 || { tail -20 "$workdir/$slot.log" >&2; die "debootstrap $SUITE failed"; }
  # The sources a real Debian host has: the release, its updates, security.
  cat >"$rootfs/etc/apt/sources.list" <<SOURCES
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb ${MIRROR%/debian}/debian-security $SUITE-security main
SOURCES
  # No package lists or .debs in the image; the lists directory dated 1970 so
  # that apt's cache_valid_time sees a stale cache and updates on first use.
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  touch -d @0 "$rootfs/var/lib/apt/lists"
  # Harness files (images/rootfs): see the comments in each.
  cp -a "$here/images/rootfs/." "$rootfs/"
  # Every container gets its own machine-id from systemd at first boot.
  : >"$rootfs/etc/machine-id"
  tar -C "$rootfs" -c . | docker import \
    -c 'ENV container=docker' \
    -c 'CMD ["/lib/systemd/systemd"]' \
    --message "celery-stack $SUITE host image, recipe $hash" \
    - "$tag" >/dev/null
  docker tag "$tag" "$IMAGE_NAME:current"
  rm -rf "$rootfs"
  # Drop builds of older recipes of this image.
  docker image ls --format '{{.Repository}}:{{.Tag}}' "$IMAGE_NAME" \
    | grep -vxF -e "$tag" -e "$IMAGE_NAME:current" | xargs -r docker rmi >/dev/null || true
  echo "build-image: built $tag in $(( $(date +%s) - start ))s, tagged $IMAGE_NAME:current"
}

mkdir -p "$workdir"
[ $# -gt 0 ] || die "usage: $0 RECIPE.conf [RECIPE.conf ...]"
# Recipes build in parallel (debootstrap mostly waits on the mirror).
pids=()
for conf in "$@"; do build_one "$conf" & pids+=($!); done
rc=0
for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
exit $rc
