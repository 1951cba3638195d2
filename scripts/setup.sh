#!/usr/bin/env bash
# Install everything forksnap's demo and tests need on a fresh Debian 12 machine (as root), and
# nothing twice: Debian packages, npm dependencies, the build, the patched QEMU 7.2 and 10.0 (cached under
# ${FORKSNAP_CACHE_DIR:-/var/cache/forksnap}/qemu), the test guest and the PostgreSQL guest
# (cached alongside).
# Idempotent; each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

log() { printf 'setup: %s\n' "$*" >&2; }
APT=(apt-get -o DPkg::Lock::Timeout=600 -y -q --no-install-recommends)

PACKAGES=(
  qemu-system-x86 qemu-utils          # stock QEMU 7.2: background-snapshot and precopy
  linux-image-amd64 busybox-static cpio  # the test/demo guest
  e2fsprogs xfsprogs util-linux        # ext4 inspection (dumpe2fs, debugfs), XFS reflink test filesystem, losetup/mount
  python3                              # libexec/release-uffd-wp.py
  chromium                             # the daemon's web page is tested in headless Chromium
  libvirt-daemon-system libvirt-clients libvirt-clients-qemu python3-libvirt  # libvirt domains (libexec/libvirt-qmp-bridge.py runs on /usr/bin/python3)
)
# libvirt's default network needs a bridge and dnsmasq: never autostart it (before the package
# creates the link, and after, for an existing install).
mkdir -p /etc/libvirt/qemu/networks/autostart
rm -f /etc/libvirt/qemu/networks/autostart/default.xml
missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  apt-get -o DPkg::Lock::Timeout=600 update -q >&2
  DEBIAN_FRONTEND=noninteractive "${APT[@]}" install "${missing[@]}" >&2
fi
rm -f /etc/libvirt/qemu/networks/autostart/default.xml

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  log "npm ci"
  npm ci --no-audit --no-fund >&2
fi
log "building forksnap (tsc)"
npm run --silent build >&2

log "patched QEMU 7.2 (fork strategy; the default forksnap picks)"
bash scripts/build-qemu.sh 7.2 >&2
log "patched QEMU 10.0 (Debian 13's source, about 6 min the first time on 2 cores)"
bash scripts/build-qemu.sh 10.0 >&2
log "test guest"
bash scripts/build-test-guest.sh >&2
log "PostgreSQL guest (debootstrap, a few minutes the first time)"
bash scripts/build-db-guest.sh >&2
log "done"
