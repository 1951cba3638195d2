#!/usr/bin/env bash
# Build forksnap's patched QEMU: Debian bookworm's qemu source package with
# patches/*.patch applied, minimal x86_64 system emulator + tools.
#
# Output: ${FORKSNAP_CACHE_DIR:-/var/cache/forksnap}/qemu/<ver>-<hash>/
#   bin/qemu-system-x86_64, bin/qemu-img (and the other tools)
#   BUILD-INFO.json (source version, patch hash, configure flags, build time)
# <ver>  = Debian source version without epoch, e.g. 7.2+dfsg-7+deb12u18
# <hash> = first 12 hex chars of sha256 over patches/*.patch (in order)
# The prefix is printed as the LAST line of stdout; progress goes to stderr,
# build output to ${CACHE}/qemu/logs/. An existing working build is reused
# at once. Firmware comes from Debian's qemu-system-data, seabios and
# ipxe-qemu packages (compiled-in --firmwarepath, no blobs installed).
#
# Environment:
#   FORKSNAP_CACHE_DIR          cache root (default /var/cache/forksnap)
#   FORKSNAP_QEMU_SOURCE_VERSION  exact source version for `apt-get source`
#                               (default: the candidate, e.g. 1:7.2+dfsg-7+deb12u18)
#   FORKSNAP_BUILD_JOBS         ninja -j (default: nproc)
#   FORKSNAP_KEEP_BUILD=1       keep the temporary build tree
set -euo pipefail

SCRIPT_PATH=$(readlink -f "${BASH_SOURCE[0]}")
REPO_ROOT=$(cd "$(dirname "$SCRIPT_PATH")/.." && pwd)
PATCH_DIR="$REPO_ROOT/patches"
CACHE_ROOT="${FORKSNAP_CACHE_DIR:-/var/cache/forksnap}/qemu"
FIRMWAREPATH=/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu
JOBS="${FORKSNAP_BUILD_JOBS:-$(nproc)}"

APT=(apt-get -o DPkg::Lock::Timeout=600 -y -q --no-install-recommends)
BUILD_DEPS=(
	build-essential ninja-build meson pkg-config python3 python3-venv
	libglib2.0-dev libpixman-1-dev zlib1g-dev libslirp-dev libaio-dev
	libfdt-dev dpkg-dev patch flex bison xz-utils ca-certificates
)
FIRMWARE_PKGS=(qemu-system-data seabios ipxe-qemu)
FIRMWARE_FILES=(
	/usr/share/seabios/bios-256k.bin
	/usr/share/seabios/vgabios-stdvga.bin
	/usr/share/qemu/kvmvapic.bin
	/usr/share/qemu/linuxboot_dma.bin
	/usr/lib/ipxe/qemu/efi-virtio.rom
	/usr/lib/ipxe/qemu/efi-e1000e.rom
)
CONFIGURE_FLAGS=(
	--target-list=x86_64-softmmu
	--disable-docs
	--disable-install-blobs
	--disable-guest-agent
	--disable-gtk
	--disable-sdl
	--disable-opengl
	--enable-slirp
	--enable-tools
	--enable-linux-aio
	--enable-fdt=system
	"--firmwarepath=$FIRMWAREPATH"
)

log() { printf 'build-qemu: %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

export DEBIAN_FRONTEND=noninteractive
export PATH="$PATH:/usr/sbin:/sbin"

pkg_installed() {
	dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep 'install ok installed' >/dev/null
}

apt_updated=0
apt_update() {
	[ "$apt_updated" = 1 ] && return 0
	[ "$(id -u)" = 0 ] || die "need root to run apt-get"
	log "apt-get update"
	apt-get -o DPkg::Lock::Timeout=600 -q update >&2
	apt_updated=1
}

ensure_pkgs() {
	local missing=() p
	for p in "$@"; do
		pkg_installed "$p" || missing+=("$p")
	done
	[ "${#missing[@]}" -eq 0 ] && return 0
	[ "$(id -u)" = 0 ] || die "missing packages (${missing[*]}) and not root"
	apt_update
	log "installing: ${missing[*]}"
	"${APT[@]}" install "${missing[@]}" >&2
}

firmware_ok() {
	local f
	for f in "${FIRMWARE_FILES[@]}"; do
		[ -e "$f" ] || return 1
	done
}

ensure_firmware() {
	firmware_ok && return 0
	ensure_pkgs "${FIRMWARE_PKGS[@]}"
	firmware_ok || die "firmware missing after installing ${FIRMWARE_PKGS[*]}"
}

# ------------------------------------------------------------ cache key
shopt -s nullglob
PATCHES=("$PATCH_DIR"/*.patch)
shopt -u nullglob
[ "${#PATCHES[@]}" -gt 0 ] || die "no patches in $PATCH_DIR"
PATCH_HASH=$(cat "${PATCHES[@]}" | sha256sum | cut -c1-12)

# The source version is only known from apt (or the .dsc); look in the
# source cache first so that a cached build needs no apt at all.
SRC_CACHE="$CACHE_ROOT/src"
mkdir -p "$CACHE_ROOT" "$SRC_CACHE" "$CACHE_ROOT/logs"

binary_works() {
	[ -x "$1/bin/qemu-system-x86_64" ] &&
		"$1/bin/qemu-system-x86_64" --version >/dev/null 2>&1 &&
		[ -x "$1/bin/qemu-img" ] &&
		"$1/bin/qemu-img" --version >/dev/null 2>&1
}

# Fast path: a finished build for these patches (and the requested or the
# newest cached source version) exists.
cached_prefix() {
	local want="${FORKSNAP_QEMU_SOURCE_VERSION:-}" d
	if [ -n "$want" ]; then
		d="$CACHE_ROOT/${want#*:}-$PATCH_HASH"
		binary_works "$d" && printf '%s\n' "$d"
		return 0
	fi
	# highest source version first
	local cands=()
	shopt -s nullglob
	cands=("$CACHE_ROOT"/*-"$PATCH_HASH")
	shopt -u nullglob
	[ "${#cands[@]}" -gt 0 ] || return 0
	for d in $(printf '%s\n' "${cands[@]}" | sort -rV); do
		if [ -f "$d/BUILD-INFO.json" ] && binary_works "$d"; then
			printf '%s\n' "$d"
			return 0
		fi
	done
	return 0
}

PREFIX=$(cached_prefix)
if [ -n "$PREFIX" ]; then
	ensure_firmware
	log "cached: $PREFIX"
	printf '%s\n' "$PREFIX"
	exit 0
fi

# Serialise concurrent builds (CI, several sessions).
exec 9>"$CACHE_ROOT/.lock"
log "waiting for the build lock"
flock 9
PREFIX=$(cached_prefix)
if [ -n "$PREFIX" ]; then
	ensure_firmware
	log "cached (built concurrently): $PREFIX"
	printf '%s\n' "$PREFIX"
	exit 0
fi

# ------------------------------------------------------------ packages
ensure_pkgs "${BUILD_DEPS[@]}" "${FIRMWARE_PKGS[@]}"
ensure_firmware

# ------------------------------------------------------------ deb-src
have_qemu_src() {
	apt-cache showsrc qemu 2>/dev/null | grep '^Version:' >/dev/null
}

add_deb_src() {
	local out=/etc/apt/sources.list.d/forksnap-deb-src
	local f
	# deb822 files: duplicate the stanzas of "Types: deb" as deb-src
	for f in /etc/apt/sources.list.d/*.sources; do
		[ -f "$f" ] || continue
		case "$f" in "$out".sources) continue ;; esac
		if grep -qiE '^Suites:.*bookworm' "$f" && grep -qE '^Types:.*\bdeb\b' "$f"; then
			log "adding deb-src stanzas based on $f"
			sed -E 's/^Types:.*/Types: deb-src/' "$f" >"$out.sources"
			return 0
		fi
	done
	# one-line format
	if grep -hsE '^deb\s+.*\sbookworm' /etc/apt/sources.list /etc/apt/sources.list.d/*.list >/dev/null; then
		log "adding deb-src lines based on the deb lines for bookworm"
		grep -hsE '^deb\s+.*\sbookworm' /etc/apt/sources.list /etc/apt/sources.list.d/*.list |
			sed -E 's/^deb(\s)/deb-src\1/' >"$out.list"
		return 0
	fi
	log "adding deb-src for deb.debian.org bookworm"
	cat >"$out.list" <<-EOF
		deb-src http://deb.debian.org/debian bookworm main
		deb-src http://deb.debian.org/debian bookworm-updates main
		deb-src http://deb.debian.org/debian-security bookworm-security main
	EOF
}

if ! have_qemu_src; then
	apt_update
fi
if ! have_qemu_src; then
	[ "$(id -u)" = 0 ] || die "no deb-src entry for qemu and not root"
	add_deb_src
	apt_updated=0
	apt_update
	have_qemu_src || die "apt-cache showsrc qemu finds nothing after adding deb-src"
fi

if [ -n "${FORKSNAP_QEMU_SOURCE_VERSION:-}" ]; then
	SRC_VERSION="$FORKSNAP_QEMU_SOURCE_VERSION"
else
	# newest available source version
	SRC_VERSION=$(apt-cache showsrc qemu | sed -n 's/^Version: //p' |
		sort -V | tail -n1)
fi
[ -n "$SRC_VERSION" ] || die "cannot determine the qemu source version"
VER_NOEPOCH=${SRC_VERSION#*:}
PREFIX="$CACHE_ROOT/$VER_NOEPOCH-$PATCH_HASH"
if binary_works "$PREFIX"; then
	log "cached: $PREFIX"
	printf '%s\n' "$PREFIX"
	exit 0
fi

# ------------------------------------------------------------ source
DSC="$SRC_CACHE/qemu_$VER_NOEPOCH.dsc"
if [ ! -f "$DSC" ]; then
	log "apt-get source qemu=$SRC_VERSION"
	(cd "$SRC_CACHE" && apt-get -o DPkg::Lock::Timeout=600 -q source \
		--download-only "qemu=$SRC_VERSION") >&2 ||
		die "apt-get source qemu=$SRC_VERSION failed"
fi
[ -f "$DSC" ] || die "$DSC missing after apt-get source"

STAMP=$(date +%Y%m%d-%H%M%S)
LOG="$CACHE_ROOT/logs/build-$VER_NOEPOCH-$PATCH_HASH-$STAMP.log"
TMP=$(mktemp -d "$CACHE_ROOT/.build-XXXXXX")
cleanup() {
	if [ "${FORKSNAP_KEEP_BUILD:-0}" != 1 ]; then
		rm -rf "$TMP"
	fi
}
trap cleanup EXIT
fail_log() {
	log "build failed; last lines of $LOG:"
	tail -n 40 "$LOG" >&2 || true
	exit 1
}

START=$(date +%s)
log "building $VER_NOEPOCH + ${#PATCHES[@]} patch(es) [$PATCH_HASH] in $TMP (log: $LOG)"
dpkg-source --no-check -x "$DSC" "$TMP/src" >>"$LOG" 2>&1 || fail_log
for p in "${PATCHES[@]}"; do
	log "applying $(basename "$p")"
	patch -d "$TMP/src" -p1 --batch --forward <"$p" >>"$LOG" 2>&1 || fail_log
done

mkdir -p "$TMP/build"
log "configure"
(cd "$TMP/build" && ../src/configure --prefix="$PREFIX" "${CONFIGURE_FLAGS[@]}") \
	>>"$LOG" 2>&1 || fail_log
log "compiling with -j$JOBS"
ninja -C "$TMP/build" -j "$JOBS" >>"$LOG" 2>&1 || fail_log
log "installing"
DESTDIR="$TMP/stage" ninja -C "$TMP/build" install >>"$LOG" 2>&1 || fail_log
STAGED="$TMP/stage$PREFIX"
binary_works "$STAGED" || { log "staged binaries do not run"; fail_log; }
END=$(date +%s)

# ------------------------------------------------------------ verify
# The firmware must be found on the compiled-in path: boot pc and q35 (with
# -kernel, i.e. linuxboot_dma.bin, VGA BIOS and a virtio NIC option ROM)
# for a few seconds and check that SeaBIOS ran.
verify_machine() {
	local machine="$1" dbg="$TMP/debugcon-$1.log" rc=0 kernel=() k
	for k in /boot/vmlinuz-*; do
		[ -f "$k" ] && kernel=(-kernel "$k" -append "console=ttyS0") && break
	done
	timeout 8 "$STAGED/bin/qemu-system-x86_64" -machine "$machine,accel=tcg" -m 128 \
		-display none -vga std -nic user,model=virtio-net-pci \
		-serial none -monitor none -no-reboot "${kernel[@]}" \
		-chardev "file,id=dbg,path=$dbg" -device isa-debugcon,iobase=0x402,chardev=dbg \
		>>"$LOG" 2>&1 || rc=$?
	if [ "$rc" != 124 ] || ! grep -q SeaBIOS "$dbg" 2>/dev/null; then
		log "machine $machine did not boot (rc=$rc)"
		fail_log
	fi
	log "machine $machine boots"
}
verify_machine q35
verify_machine pc

# The patched capability must be there (forksnap detects support this way).
printf '%s\n' '{"execute":"qmp_capabilities"}' \
	'{"execute":"query-migrate-capabilities"}' '{"execute":"quit"}' |
	timeout 20 "$STAGED/bin/qemu-system-x86_64" -machine none -nodefaults \
		-display none -qmp stdio >"$TMP/caps.json" 2>>"$LOG" || true
if ! grep '"x-fork-snapshot"' "$TMP/caps.json" >/dev/null; then
	log "query-migrate-capabilities does not list x-fork-snapshot"
	fail_log
fi
log "x-fork-snapshot capability present"

cat >"$STAGED/BUILD-INFO.json" <<EOF
{
  "sourceVersion": "$SRC_VERSION",
  "patchHash": "$PATCH_HASH",
  "patches": [$(for p in "${PATCHES[@]}"; do printf '"%s",' "$(basename "$p")"; done | sed 's/,$//')],
  "configure": [$(for f in "${CONFIGURE_FLAGS[@]}"; do printf '"%s",' "$f"; done | sed 's/,$//')],
  "jobs": $JOBS,
  "buildSeconds": $((END - START)),
  "builtAt": "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
}
EOF

# ------------------------------------------------------------ publish
# rename(2) within the cache file system: atomic. A leftover that does
# not work (we hold the lock, nobody else publishes) is replaced.
if [ -e "$PREFIX" ] && ! binary_works "$PREFIX"; then
	log "removing broken $PREFIX"
	rm -rf "$PREFIX"
fi
mv -T "$STAGED" "$PREFIX" 2>/dev/null || {
	binary_works "$PREFIX" || die "cannot move the build to $PREFIX"
	log "$PREFIX appeared meanwhile; keeping it"
}
log "built in $((END - START)) s: $PREFIX"
printf '%s\n' "$PREFIX"
