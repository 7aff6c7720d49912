#!/usr/bin/env bash
# Prepare what the Molecule scenarios and the demo need on a fresh Debian/Ubuntu machine:
#   1. a Docker engine that answers (Debian's docker.io, started in the background if none runs);
#   2. local systemd base images built with debootstrap (no registry is ever contacted).
# Idempotent: an engine that answers and images that exist are left alone.
#
# Environment:
#   EDUPULSE_IMAGES      suites to build, space separated (default: "bookworm trixie")
#   EDUPULSE_CACHE_DIR   download cache shared by builds and containers (default: /var/cache/edupulse)
#   EDUPULSE_MIRROR      Debian mirror for debootstrap and the images' apt sources (default: the
#                        first Debian archive URI of this machine's own apt sources, read by
#                        tests/harness/apt_sources.py; none there: debootstrap's own default)
#   EDUPULSE_SECURITY_MIRROR  URI of the images' -security suite (default: the one this machine
#                        uses for Debian's -security suite; none: the images get no security line)
set -euo pipefail

images=${EDUPULSE_IMAGES:-bookworm trixie}
cache_dir=${EDUPULSE_CACHE_DIR:-/var/cache/edupulse}
here=$(cd "$(dirname "$0")" && pwd)
dockerd_log=${EDUPULSE_DOCKERD_LOG:-/var/log/edupulse-dockerd.log}

log() { printf '[prepare-docker] %s\n' "$*" >&2; }

# The controller's own Debian mirror (main or security), or nothing (no python3, or no Debian
# entry in its apt sources).
controller_uri() {
  command -v python3 >/dev/null 2>&1 || return 0
  python3 "$here/apt_sources.py" "$1" || true
}

mirror=${EDUPULSE_MIRROR-$(controller_uri main)}
security_mirror=${EDUPULSE_SECURITY_MIRROR-$(controller_uri security)}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
  log "installing $*"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_engine() {
  if docker info >/dev/null 2>&1; then
    return 0
  fi
  command -v dockerd >/dev/null 2>&1 || apt_install docker.io
  if ! pgrep -x dockerd >/dev/null 2>&1; then
    log "starting dockerd (log: $dockerd_log)"
    as_root sh -c "nohup dockerd >'$dockerd_log' 2>&1 &"
  fi
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && { log "docker engine answers"; return 0; }
    sleep 1
  done
  log "docker engine did not answer within 60 s; see $dockerd_log"
  tail -n 20 "$dockerd_log" >&2 || true
  exit 1
}

# Image name for a Debian suite: the names .config/molecule/config.yml and playbooks/demo.yml
# use. Bump the tag (r2, r3, ...) whenever the recipe below changes, so old images are not reused.
# Like an Ubuntu 24.04 server image: iproute2 (ss: testinfra socket checks) and python3-apt
# (Ansible's apt module needs it in check mode) come preinstalled.
image_name() {
  case "$1" in
    bookworm) echo "edupulse/debian12-systemd:r3" ;;
    trixie) echo "edupulse/debian13-systemd:r3" ;;
    *) echo "edupulse/$1-systemd:r3" ;;
  esac
}

build_image() {
  local suite=$1 name rootfs
  name=$(image_name "$suite")
  if docker image inspect "$name" >/dev/null 2>&1; then
    log "$name exists"
    return 0
  fi
  command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
  rootfs=$(mktemp -d "/tmp/edupulse-rootfs-$suite.XXXXXX")
  mkdir -p "$cache_dir/debootstrap-$suite"
  log "debootstrap $suite into $rootfs from ${mirror:-the default mirror of debootstrap}"
  # No mirror argument when none is known: debootstrap then uses its own default.
  as_root debootstrap --variant=minbase --cache-dir="$cache_dir/debootstrap-$suite" \
    --include=systemd,systemd-sysv,python3,dbus,sudo,ca-certificates,iproute2,python3-apt \
    "$suite" "$rootfs" ${mirror:+"$mirror"} >"$rootfs.log" 2>&1 || {
      tail -n 30 "$rootfs.log" >&2; exit 1; }
  # The mirror debootstrap used, from the sources.list it wrote (`deb URI suite main`).
  local uri=$mirror
  [ -n "$uri" ] || uri=$(awk '$1 == "deb" { print $2; exit }' "$rootfs/etc/apt/sources.list")
  [ -n "$uri" ] || { log "no mirror in $rootfs/etc/apt/sources.list"; exit 1; }
  # A server's apt sources: the suite, its updates and (when this machine names one) security.
  {
    echo "deb $uri $suite main"
    echo "deb $uri $suite-updates main"
    [ -z "$security_mirror" ] || echo "deb $security_mirror $suite-security main"
  } | as_root tee "$rootfs/etc/apt/sources.list" >/dev/null
  # Keep downloaded .debs so a mounted /var/cache/apt/archives caches them across containers.
  as_root rm -f "$rootfs/etc/apt/apt.conf.d/docker-clean"
  as_root sh -c ": > '$rootfs/etc/machine-id'"
  log "importing $name"
  as_root tar -C "$rootfs" -c . | docker import -c 'CMD ["/sbin/init"]' -c 'ENV container=docker' - "$name" >/dev/null
  as_root rm -rf "$rootfs" "$rootfs.log"
}

ensure_engine
for suite in $images; do
  build_image "$suite"
done
