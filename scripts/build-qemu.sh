#!/usr/bin/env bash
# Build forksnap's patched QEMU for one base version: Debian's qemu source
# package with patches/qemu-<base>/*.patch applied, minimal x86_64 system
# emulator + tools, seccomp enabled (as Debian's own build is, so -sandbox
# works as under libvirt).
#
#   scripts/build-qemu.sh [7.2|10.0]        (default: $FORKSNAP_QEMU_BASE, else 7.2)
#
# Bases:
#   7.2   bookworm's source (the host's own apt sources; deb-src added if missing)
#   10.0  trixie's source (qemu 1:10.0.x+ds-0+deb13uN), fetched through a private
#         apt configuration under ${CACHE}/qemu/apt-trixie/ (its own sources.list,
#         lists and cache): the host stays bookworm. QEMU 10.0 needs meson >= 1.5,
#         which bookworm lacks; Debian's +ds tarball drops QEMU's bundled wheel, so
#         a meson wheel is fetched once with pip into ${CACHE}/qemu/wheels/ and
#         handed to configure's offline venv (python/wheels).
#
# Output: ${FORKSNAP_CACHE_DIR:-/var/cache/forksnap}/qemu/<ver>-<hash>/
#   bin/qemu-system-x86_64, bin/qemu-img (and the other tools)
#   BUILD-INFO.json (base, source version, hash, patches, configure flags, build time)
# <ver>  = Debian source version without epoch, e.g. 7.2+dfsg-7+deb12u18
# <hash> = first 12 hex chars of sha256 over the base's patches (in order),
#          the configure flags and the build tooling pins (meson wheel)
# The prefix is printed as the LAST line of stdout; progress goes to stderr,
# build output to ${CACHE}/qemu/logs/. An existing working build is reused
# at once. Firmware comes from Debian's qemu-system-data, seabios and
# ipxe-qemu packages (compiled-in --firmwarepath, no blobs installed).
#
# Environment:
#   FORKSNAP_QEMU_BASE          7.2 | 10.0 when no argument is given (default 7.2)
#   FORKSNAP_CACHE_DIR          cache root (default /var/cache/forksnap)
#   FORKSNAP_QEMU_SOURCE_VERSION  exact source version for `apt-get source`
#                               (default: the newest the base's suite has)
#   FORKSNAP_DEBIAN_MIRROR      mirror for the trixie deb-src entry (default: the
#                               host's bookworm mirror, else http://deb.debian.org/debian)
#   FORKSNAP_BUILD_JOBS         ninja -j (default: nproc)
#   FORKSNAP_KEEP_BUILD=1       keep the temporary build tree
#   FORKSNAP_QEMU_CACHED_ONLY=1 only look: print the cached prefix, or exit 3 if
#                               this base is not built for the current patches
set -euo pipefail

SCRIPT_PATH=$(readlink -f "${BASH_SOURCE[0]}")
REPO_ROOT=$(cd "$(dirname "$SCRIPT_PATH")/.." && pwd)
CACHE_ROOT="${FORKSNAP_CACHE_DIR:-/var/cache/forksnap}/qemu"
FIRMWAREPATH=/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu
JOBS="${FORKSNAP_BUILD_JOBS:-$(nproc)}"

log() { printf 'build-qemu: %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

usage() {
	printf 'usage: %s [7.2|10.0]   (or FORKSNAP_QEMU_BASE=7.2|10.0)\n' "$(basename "$0")" >&2
	exit 2
}

[ "$#" -le 1 ] || usage
BASE="${1:-${FORKSNAP_QEMU_BASE:-7.2}}"
case "$BASE" in
7.2)
	SUITE=bookworm
	VERSION_GLOB='7.2*'
	;;
10.0)
	SUITE=trixie
	VERSION_GLOB='10.0*'
	;;
-h | --help) usage ;;
*) die "unknown QEMU base '$BASE' (supported: 7.2, 10.0)" ;;
esac
PATCH_DIR="$REPO_ROOT/patches/qemu-$BASE"

APT=(apt-get -o DPkg::Lock::Timeout=600 -y -q --no-install-recommends)
BUILD_DEPS=(
	build-essential ninja-build meson pkg-config python3 python3-venv
	libglib2.0-dev libpixman-1-dev zlib1g-dev libslirp-dev libaio-dev
	libfdt-dev libseccomp-dev dpkg-dev patch flex bison xz-utils ca-certificates
)
[ "$BASE" = 10.0 ] && BUILD_DEPS+=(python3-pip)
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
	--enable-seccomp
	"--firmwarepath=$FIRMWAREPATH"
)
# 10.0: every subproject forksnap needs is in the tarball; never reach for the network
[ "$BASE" = 10.0 ] && CONFIGURE_FLAGS+=(--disable-download)

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

mkdir -p "$CACHE_ROOT" "$CACHE_ROOT/src" "$CACHE_ROOT/logs"
SRC_CACHE="$CACHE_ROOT/src"

# ------------------------------------------------------------ meson (10.0)
# The wheel is part of the cache key (a different meson is a different build).
WHEEL_DIR="$CACHE_ROOT/wheels"
MESON_WHEEL=""
find_meson_wheel() {
	local w
	MESON_WHEEL=""
	shopt -s nullglob
	for w in "$WHEEL_DIR"/meson-*-py3-none-any.whl; do
		MESON_WHEEL="$w" # the last in glob order; there is normally one
	done
	shopt -u nullglob
}
ensure_meson_wheel() {
	find_meson_wheel
	[ -n "$MESON_WHEEL" ] && return 0
	ensure_pkgs python3-pip
	mkdir -p "$WHEEL_DIR"
	log "fetching a meson >= 1.5 wheel with pip (QEMU 10.0 needs it; bookworm has 1.0)"
	python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$WHEEL_DIR" 'meson>=1.5.0,<2' >&2 ||
		die "pip could not fetch a meson wheel"
	find_meson_wheel
	[ -n "$MESON_WHEEL" ] || die "no meson wheel in $WHEEL_DIR after pip download"
}
[ "$BASE" = 10.0 ] && find_meson_wheel

# ------------------------------------------------------------ cache key
shopt -s nullglob
PATCHES=("$PATCH_DIR"/[0-9]*.patch)
shopt -u nullglob
[ "${#PATCHES[@]}" -gt 0 ] || die "no patches in $PATCH_DIR"

compute_hash() {
	{
		printf 'base %s\n' "$BASE"
		cat "${PATCHES[@]}"
		printf 'configure %s\n' "${CONFIGURE_FLAGS[@]}"
		[ -n "$MESON_WHEEL" ] && printf 'meson %s\n' "$(basename "$MESON_WHEEL")"
		true
	} | sha256sum | cut -c1-12
}
# Without the wheel yet (a cold cache), the hash is computed again once it is there.
PATCH_HASH=$(compute_hash)

binary_works() {
	[ -x "$1/bin/qemu-system-x86_64" ] &&
		"$1/bin/qemu-system-x86_64" --version >/dev/null 2>&1 &&
		[ -x "$1/bin/qemu-img" ] &&
		"$1/bin/qemu-img" --version >/dev/null 2>&1
}

# Fast path: a finished build of this base for these patches (and the
# requested or the newest cached source version) exists.
cached_prefix() {
	local want="${FORKSNAP_QEMU_SOURCE_VERSION:-}" d
	if [ -n "$want" ]; then
		d="$CACHE_ROOT/${want#*:}-$PATCH_HASH"
		binary_works "$d" && printf '%s\n' "$d"
		return 0
	fi
	local cands=()
	shopt -s nullglob
	# shellcheck disable=SC2206 # the glob is the point
	cands=("$CACHE_ROOT"/$VERSION_GLOB-"$PATCH_HASH")
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
	[ "${FORKSNAP_QEMU_CACHED_ONLY:-0}" = 1 ] || ensure_firmware
	log "cached ($BASE): $PREFIX"
	printf '%s\n' "$PREFIX"
	exit 0
fi
if [ "${FORKSNAP_QEMU_CACHED_ONLY:-0}" = 1 ]; then
	log "QEMU $BASE is not built for patches/qemu-$BASE [$PATCH_HASH]: run scripts/build-qemu.sh $BASE"
	exit 3
fi

# Serialise concurrent builds (CI, several sessions).
exec 9>"$CACHE_ROOT/.lock"
log "waiting for the build lock"
flock 9
PREFIX=$(cached_prefix)
if [ -n "$PREFIX" ]; then
	ensure_firmware
	log "cached (built concurrently, $BASE): $PREFIX"
	printf '%s\n' "$PREFIX"
	exit 0
fi

# ------------------------------------------------------------ packages
ensure_pkgs "${BUILD_DEPS[@]}" "${FIRMWARE_PKGS[@]}"
ensure_firmware
if [ "$BASE" = 10.0 ]; then
	ensure_meson_wheel
	PATCH_HASH=$(compute_hash)
fi

# ------------------------------------------------------------ deb-src
# APT_SRC: the apt options that see the base's source packages.
APT_SRC=()

have_qemu_src() {
	apt-cache "${APT_SRC[@]}" showsrc qemu 2>/dev/null | grep '^Version:' >/dev/null
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

# The Debian mirror the host uses for bookworm (not -security), so that the
# trixie entry goes through the same mirror or proxy.
host_debian_mirror() {
	local f uri
	for f in /etc/apt/sources.list.d/*.sources; do
		[ -f "$f" ] || continue
		uri=$(awk '
			/^[[:space:]]*$/ { if (deb && main && uri != "") { print uri; exit } deb = main = 0; uri = "" }
			/^Types:/ && / deb( |$)/ { deb = 1 }
			/^Suites:/ && /(^|[ \t])bookworm([ \t]|$)/ { main = 1 }
			/^URIs:/ { uri = $2 }
			END { if (deb && main && uri != "") print uri }' "$f" | head -n1)
		[ -n "$uri" ] && printf '%s\n' "$uri" && return 0
	done
	uri=$(grep -hsE '^deb\s+(\[[^]]*\]\s+)?\S+\s+bookworm(\s|$)' /etc/apt/sources.list /etc/apt/sources.list.d/*.list |
		sed -E 's/^deb\s+(\[[^]]*\]\s+)?(\S+).*/\2/' | head -n1)
	[ -n "$uri" ] && printf '%s\n' "$uri" && return 0
	printf '%s\n' http://deb.debian.org/debian
}

# trixie's deb-src through a private apt configuration: nothing of the
# host's apt state (sources, lists, cache) is read or changed.
setup_private_trixie_apt() {
	local dir="$CACHE_ROOT/apt-trixie" mirror
	mirror="${FORKSNAP_DEBIAN_MIRROR:-$(host_debian_mirror)}"
	mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial"
	printf 'deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s trixie main\n' \
		"$mirror" >"$dir/sources.list.new"
	if ! cmp -s "$dir/sources.list.new" "$dir/sources.list" 2>/dev/null; then
		mv "$dir/sources.list.new" "$dir/sources.list"
		rm -f "$dir/lists/"*_Sources* "$dir/lists/"*Release*
	else
		rm -f "$dir/sources.list.new"
	fi
	APT_SRC=(
		-o "Dir::Etc::sourcelist=$dir/sources.list"
		-o Dir::Etc::sourceparts=-
		-o "Dir::State::Lists=$dir/lists"
		-o "Dir::Cache=$dir/cache"
		-o APT::Get::List-Cleanup=0
	)
	if ! have_qemu_src; then
		log "apt-get update (private trixie deb-src: $mirror)"
		apt-get "${APT_SRC[@]}" -q update >&2 || die "apt-get update for trixie's deb-src failed"
		have_qemu_src || die "trixie's deb-src lists no qemu source package"
	fi
}

if [ "$BASE" = 10.0 ]; then
	setup_private_trixie_apt
else
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
fi

if [ -n "${FORKSNAP_QEMU_SOURCE_VERSION:-}" ]; then
	SRC_VERSION="$FORKSNAP_QEMU_SOURCE_VERSION"
else
	# newest available source version of this base
	SRC_VERSION=$(apt-cache "${APT_SRC[@]}" showsrc qemu | sed -n 's/^Version: //p' |
		while read -r v; do
			# shellcheck disable=SC2254 # VERSION_GLOB is a pattern
			case "${v#*:}" in $VERSION_GLOB) printf '%s\n' "$v" ;; esac
		done | sort -V | tail -n1)
fi
[ -n "$SRC_VERSION" ] || die "cannot determine the qemu $BASE source version"
VER_NOEPOCH=${SRC_VERSION#*:}
# shellcheck disable=SC2254
case "$VER_NOEPOCH" in $VERSION_GLOB) ;; *) die "source version $SRC_VERSION is not QEMU $BASE" ;; esac
PREFIX="$CACHE_ROOT/$VER_NOEPOCH-$PATCH_HASH"
if binary_works "$PREFIX"; then
	log "cached: $PREFIX"
	printf '%s\n' "$PREFIX"
	exit 0
fi

# ------------------------------------------------------------ source
DSC="$SRC_CACHE/qemu_$VER_NOEPOCH.dsc"
if [ ! -f "$DSC" ]; then
	log "apt-get source qemu=$SRC_VERSION ($SUITE)"
	(cd "$SRC_CACHE" && apt-get "${APT_SRC[@]}" -o DPkg::Lock::Timeout=600 -q source \
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
log "building QEMU $BASE: $VER_NOEPOCH + ${#PATCHES[@]} patch(es) [$PATCH_HASH] in $TMP (log: $LOG)"
dpkg-source --no-check -x "$DSC" "$TMP/src" >>"$LOG" 2>&1 || fail_log
for p in "${PATCHES[@]}"; do
	log "applying qemu-$BASE/$(basename "$p")"
	patch -d "$TMP/src" -p1 --batch --forward <"$p" >>"$LOG" 2>&1 || fail_log
done

if [ "$BASE" = 10.0 ]; then
	# configure installs meson into its venv from python/wheels, at the
	# version pythondeps.toml names: name the wheel we have.
	meson_version=$(basename "$MESON_WHEEL" | sed -E 's/^meson-([^-]+)-.*/\1/')
	mkdir -p "$TMP/src/python/wheels"
	cp "$MESON_WHEEL" "$TMP/src/python/wheels/"
	sed -i -E "s/^(meson = \\{ accepted = \"[^\"]*\", installed = )\"[^\"]*\"/\\1\"$meson_version\"/" \
		"$TMP/src/pythondeps.toml"
	grep -q "installed = \"$meson_version\"" "$TMP/src/pythondeps.toml" ||
		die "could not point pythondeps.toml at meson $meson_version"
	log "meson $meson_version (wheel from $WHEEL_DIR)"
fi

mkdir -p "$TMP/build"
log "configure"
(cd "$TMP/build" && ../src/configure --prefix="$PREFIX" "${CONFIGURE_FLAGS[@]}") \
	>>"$LOG" 2>&1 || fail_log
log "compiling with -j$JOBS"
ninja -C "$TMP/build" -j "$JOBS" >>"$LOG" 2>&1 || fail_log
log "installing"
DESTDIR="$TMP/stage" ninja -C "$TMP/build" install >>"$LOG" 2>&1 || fail_log
STAGED="$TMP/stage$PREFIX"
binary_works "$STAGED" || {
	log "staged binaries do not run"
	fail_log
}
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

# The patched capability must be there (forksnap detects support this way),
# and the sandbox must work (libvirt starts QEMU with -sandbox).
printf '%s\n' '{"execute":"qmp_capabilities"}' \
	'{"execute":"query-migrate-capabilities"}' '{"execute":"quit"}' |
	timeout 20 "$STAGED/bin/qemu-system-x86_64" -machine none -nodefaults \
		-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny \
		-display none -qmp stdio >"$TMP/caps.json" 2>>"$LOG" || true
if ! grep '"x-fork-snapshot"' "$TMP/caps.json" >/dev/null; then
	log "query-migrate-capabilities (under -sandbox on,...) does not list x-fork-snapshot"
	fail_log
fi
log "x-fork-snapshot capability present, -sandbox works"

json_list() {
	local sep="" x
	for x in "$@"; do
		printf '%s"%s"' "$sep" "$x"
		sep=","
	done
}
cat >"$STAGED/BUILD-INFO.json" <<EOF
{
  "base": "$BASE",
  "sourceVersion": "$SRC_VERSION",
  "patchHash": "$PATCH_HASH",
  "patches": [$(json_list "${PATCHES[@]##*/}")],
  "configure": [$(json_list "${CONFIGURE_FLAGS[@]}")],
  "meson": "$([ -n "$MESON_WHEEL" ] && basename "$MESON_WHEEL")",
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
log "built QEMU $BASE in $((END - START)) s: $PREFIX"
printf '%s\n' "$PREFIX"
