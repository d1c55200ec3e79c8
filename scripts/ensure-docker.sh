#!/usr/bin/env bash
# Make sure a Docker engine answers. On a fresh Debian machine run as root:
# install Debian's docker.io (and debootstrap for the host images) when
# missing, and start dockerd in the background when no init system runs it.
# Anywhere else: explain what is missing and stop.
set -euo pipefail

log=/var/log/celery-stack-dockerd.log
say() { echo "ensure-docker: $*"; }
die() { echo "ensure-docker: $*" >&2; exit 1; }

if docker info >/dev/null 2>&1; then
  say "Docker engine $(docker version --format '{{.Server.Version}}') is running"
  exit 0
fi

is_root() { [ "$(id -u)" -eq 0 ]; }

if ! command -v dockerd >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then
  is_root && command -v apt-get >/dev/null 2>&1 \
    || die "no Docker engine here and I can only install one as root on Debian/Ubuntu: install Docker (and debootstrap), start it, and run again"
  say "installing docker.io and debootstrap from the Debian archive"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends docker.io debootstrap ca-certificates iptables >/dev/null
fi

if docker info >/dev/null 2>&1; then
  say "Docker engine is running"
  exit 0
fi

if [ -d /run/systemd/system ]; then
  is_root || die "dockerd is installed but not running: sudo systemctl start docker"
  systemctl start docker
else
  is_root || die "dockerd is installed but not running and I am not root: start dockerd yourself"
  say "no init system manages dockerd here: starting it in the background (log: $log)"
  nohup dockerd >"$log" 2>&1 &
fi

for _ in $(seq 1 60); do
  if docker info >/dev/null 2>&1; then
    say "Docker engine $(docker version --format '{{.Server.Version}}') is running"
    exit 0
  fi
  sleep 1
done
tail -20 "$log" >&2 2>/dev/null || true
die "dockerd did not answer within 60s"
