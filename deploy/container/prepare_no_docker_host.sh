#!/usr/bin/env bash
# Prepare a machine WITHOUT a Docker engine or Docker Hub access to build and run
# the bento's image with buildah and podman. Specific to such machines (the CI
# and dev VMs of this project); on a machine with Docker this script does nothing.
#
#   eval "$(deploy/container/prepare_no_docker_host.sh)"   # then: make container
#
# What it does, each step skipped when already done (idempotent, run as root):
#   1. apt-get install buildah podman runc debootstrap, when missing;
#   2. container storage and engine settings under $UQSERVE_CONTAINER_WORK
#      (vfs storage, runc with explicit rlimits, host network, never pull);
#   3. a stand-in for docker.io/library/python:3.11-slim (the generated
#      Dockerfile's base, which cannot be pulled here): a debootstrapped Debian 12
#      with Python 3.11 that trusts this machine's CA certificates (its traffic
#      to PyPI goes through an intercepting proxy). The root file system is
#      cached as $UQSERVE_CONTAINER_WORK/rootfs.tar.
# Stdout: `export NAME='value'` lines for the caller's environment; log: stderr.
# See ../shared/container/README.md for the recipe and what fails here.
set -euo pipefail

WORK="${UQSERVE_CONTAINER_WORK:-/var/tmp/uqserve-container}"
BASE_IMAGE="docker.io/library/python:3.11-slim"
SUITE=bookworm  # Debian 12: Python 3.11, as in the official python:3.11-slim

log() { echo "prepare_no_docker_host [${SECONDS} s]: $*" >&2; }

docker_engine() { command -v docker >/dev/null && docker info >/dev/null 2>&1; }

install_tools() {
  local missing=()
  for tool in buildah podman runc debootstrap; do
    command -v "$tool" >/dev/null || missing+=("$tool")
  done
  [ ${#missing[@]} -eq 0 ] && return
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq "${missing[@]}" >&2
}

write_configs() {
  mkdir -p "$WORK"
  # vfs (the driver known to work here) copies the whole image per layer and per container.
  printf '[storage]\ndriver = "vfs"\ngraphroot = "%s/storage"\nrunroot = "%s/run"\n' \
    "$WORK" "$WORK" >"$WORK/storage.conf"
  # crun fails here ("cgroups in hybrid mode not supported"); runc fails with the
  # default rlimits; container networks are not set up: use the host's.
  cat >"$WORK/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
netns = "host"

[engine]
runtime = "runc"
pull_policy = "never"
EOF
}

debian_mirror() {
  if [ -n "${UQSERVE_DEBIAN_MIRROR:-}" ]; then echo "$UQSERVE_DEBIAN_MIRROR"; return; fi
  local found
  found=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ {print $2}' \
    | grep -E '/debian/?$' | head -n1 || true)
  [ -z "$found" ] && found=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
    | awk '$1 == "deb" && $2 ~ /\/debian\/?$/ {print $2}' | head -n1 || true)
  echo "${found:-http://deb.debian.org/debian}"
}

make_rootfs_tar() {
  [ -s "$WORK/rootfs.tar" ] && return
  local rootfs="$WORK/rootfs" mirror
  mirror=$(debian_mirror)
  log "debootstrap $SUITE from $mirror into $rootfs"
  rm -rf "$rootfs"
  debootstrap --variant=minbase \
    --include=python3,python3-pip,python3-venv,python-is-python3,ca-certificates \
    "$SUITE" "$rootfs" "$mirror" >&2
  rm -f "$rootfs"/usr/lib/python3.*/EXTERNALLY-MANAGED
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
  fi
  chroot "$rootfs" update-ca-certificates >&2
  chroot "$rootfs" apt-get clean
  tar -C "$rootfs" -cf "$WORK/rootfs.tar.part" .
  mv "$WORK/rootfs.tar.part" "$WORK/rootfs.tar"
  rm -rf "$rootfs"
}

import_base_image() {
  if buildah inspect --type image "$BASE_IMAGE" >/dev/null 2>&1; then return; fi
  make_rootfs_tar
  log "importing $WORK/rootfs.tar as $BASE_IMAGE"
  local container
  container=$(buildah from scratch)
  buildah add "$container" "$WORK/rootfs.tar" / >/dev/null
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    --cmd python3 "$container"
  buildah commit --rm "$container" "$BASE_IMAGE" >&2
}

main() {
  if docker_engine; then
    log "a Docker engine answers: nothing to prepare"
    return
  fi
  install_tools
  write_configs
  export CONTAINERS_STORAGE_CONF="$WORK/storage.conf" CONTAINERS_CONF="$WORK/containers.conf"
  export BUILDAH_ISOLATION=chroot
  import_base_image
  log "ready"
  cat <<EOF
export CONTAINERS_STORAGE_CONF='$CONTAINERS_STORAGE_CONF'
export CONTAINERS_CONF='$CONTAINERS_CONF'
export BUILDAH_ISOLATION='chroot'
EOF
}

main "$@"
