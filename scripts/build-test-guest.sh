#!/usr/bin/env bash
# Build the forksnap test guest: the host's Debian kernel, a busybox-static
# initramfs carrying test/fixtures/guest/, and an empty 64 MiB ext4 data disk.
#
# Output: ${FORKSNAP_CACHE_DIR:-/var/cache/forksnap}/test-guest/<key>/
#   vmlinuz, initrd.img, data.raw, manifest.json
# <key> = first 16 hex chars of sha256(this script + test/fixtures/guest/* +
# kernel version). An existing complete output dir is reused as is.
# The output directory is printed as the last line of stdout; everything else
# goes to stderr.
#
# Environment:
#   FORKSNAP_CACHE_DIR       cache root (default /var/cache/forksnap)
#   FORKSNAP_KERNEL_VERSION  kernel release to use (default: newest installed
#                            one with both /boot/vmlinuz-V and /lib/modules/V)
set -euo pipefail

SCRIPT_PATH=$(readlink -f "${BASH_SOURCE[0]}")
REPO_ROOT=$(cd "$(dirname "$SCRIPT_PATH")/.." && pwd)
FIXTURES="$REPO_ROOT/test/fixtures/guest"
CACHE_ROOT="${FORKSNAP_CACHE_DIR:-/var/cache/forksnap}/test-guest"
DATA_SIZE=64M
APPEND="console=ttyS0 quiet"

# Modules to load, in this order (their dependencies from modules.dep are
# inserted before them). "required": the guest refuses to boot without it.
WANTED_MODULES=(
	"virtio_ring required"
	"virtio required"
	"virtio_pci_legacy_dev optional"
	"virtio_pci_modern_dev optional"
	"virtio_pci required"
	"virtio_blk required"
	"failover optional"
	"net_failover optional"
	"virtio_net optional"
	"virtio_console optional"
	"crc16 required"
	"crc32c_generic optional"
	"mbcache required"
	"jbd2 required"
	"ext4 required"
	"button optional"
	"evdev optional"
)

log() { printf 'build-test-guest: %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

export PATH="$PATH:/usr/sbin:/sbin"

# ---------------------------------------------------------------- packages
pkg_installed() {
	dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

installed_kernels() {
	local f v
	for f in /boot/vmlinuz-*; do
		[ -f "$f" ] || continue
		v=${f#/boot/vmlinuz-}
		[ -f "/lib/modules/$v/modules.dep" ] && printf '%s\n' "$v"
	done
	return 0
}

ensure_packages() {
	local missing=()
	[ -n "$(installed_kernels)" ] || missing+=(linux-image-amd64)
	pkg_installed busybox-static || missing+=(busybox-static)
	command -v mkfs.ext4 >/dev/null 2>&1 || missing+=(e2fsprogs)
	command -v cpio >/dev/null 2>&1 || missing+=(cpio)
	[ "${#missing[@]}" -eq 0 ] && return 0

	[ "$(id -u)" = 0 ] || die "missing packages (${missing[*]}) and not root"
	log "installing: ${missing[*]}"
	local apt=(apt-get -o DPkg::Lock::Timeout=600 -y --no-install-recommends)
	if ! DEBIAN_FRONTEND=noninteractive "${apt[@]}" install "${missing[@]}" >&2; then
		log "apt-get install failed; updating package lists and retrying"
		DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update >&2
		DEBIAN_FRONTEND=noninteractive "${apt[@]}" install "${missing[@]}" >&2
	fi
}

# ---------------------------------------------------------------- modules
# modules.dep line for module NAME ('-' and '_' are equivalent), or nothing.
moddep_line() {
	local name=${1//-/_}
	awk -v want="$name" '{
		p = $1; sub(/:$/, "", p); n = p; sub(/.*\//, "", n)
		sub(/\.ko(\.xz|\.zst|\.gz)?$/, "", n); gsub(/-/, "_", n)
		if (n == want) { print; exit }
	}' "$MODDIR/modules.dep"
}

modname_of() {
	local n=${1##*/}
	n=${n%.gz}
	n=${n%.xz}
	n=${n%.zst}
	n=${n%.ko}
	printf '%s\n' "${n//-/_}"
}

is_builtin() {
	local name=${1//-/_}
	[ -f "$MODDIR/modules.builtin" ] || return 1
	sed 's|.*/||; s|\.ko$||; s|-|_|g' "$MODDIR/modules.builtin" | grep -qx "$name"
}

declare -A MOD_SEEN=() MOD_NEED=() MOD_PATH=()
MOD_ORDER=()

# Depth-first: dependencies first, then the module itself.
add_module() {
	local name=$1 need=$2 line path dep
	name=${name//-/_}
	if [ -n "${MOD_SEEN[$name]:-}" ]; then
		[ "$need" = required ] && MOD_NEED[$name]=required
		return 0
	fi
	line=$(moddep_line "$name")
	if [ -z "$line" ]; then
		if is_builtin "$name"; then
			log "module $name is built into the kernel"
			MOD_SEEN[$name]=builtin
			return 0
		fi
		[ "$need" = required ] && die "required module $name not found for kernel $KVER"
		log "optional module $name not available for kernel $KVER, skipped"
		MOD_SEEN[$name]=missing
		return 0
	fi
	MOD_SEEN[$name]=visiting
	path=${line%%:*}
	for dep in ${line#*:}; do
		add_module "$(modname_of "$dep")" "$need"
	done
	MOD_SEEN[$name]=module
	MOD_NEED[$name]=$need
	MOD_PATH[$name]=$MODDIR/$path
	MOD_ORDER+=("$name")
}

# Copy NAME's .ko (decompressed: busybox insmod takes plain .ko) to DEST.
copy_module() {
	local src=$1 dest=$2
	case "$src" in
	*.ko) cp "$src" "$dest" ;;
	*.ko.xz) xz -dc "$src" > "$dest" ;;
	*.ko.zst) zstd -qdc "$src" > "$dest" ;;
	*.ko.gz) gzip -dc "$src" > "$dest" ;;
	*) die "unknown module format: $src" ;;
	esac
}

json_str() {
	local s=$1
	s=${s//\\/\\\\}
	s=${s//\"/\\\"}
	printf '"%s"' "$s"
}

# ---------------------------------------------------------------- main
[ -d "$FIXTURES" ] || die "missing $FIXTURES"
ensure_packages

if [ -n "${FORKSNAP_KERNEL_VERSION:-}" ]; then
	KVER=$FORKSNAP_KERNEL_VERSION
	if [ ! -f "/boot/vmlinuz-$KVER" ] || [ ! -f "/lib/modules/$KVER/modules.dep" ]; then
		die "kernel $KVER is not installed"
	fi
else
	KVER=$(installed_kernels | sort -V | tail -n 1)
	[ -n "$KVER" ] || die "no installed kernel with modules found"
fi
MODDIR=/lib/modules/$KVER
BUSYBOX=/bin/busybox
[ -x "$BUSYBOX" ] || die "$BUSYBOX not found"

KEY=$(
	{
		printf 'script\n'
		cat "$SCRIPT_PATH"
		(cd "$FIXTURES" && find . -type f -print | LC_ALL=C sort) | while IFS= read -r f; do
			printf '\nfile %s\n' "$f"
			cat "$FIXTURES/$f"
		done
		printf '\nkernel %s\n' "$KVER"
	} | sha256sum | cut -c1-16
)
OUT="$CACHE_ROOT/$KEY"

complete() {
	[ -s "$OUT/vmlinuz" ] && [ -s "$OUT/initrd.img" ] && [ -s "$OUT/data.raw" ] \
		&& [ -s "$OUT/manifest.json" ]
}

mkdir -p "$CACHE_ROOT"
# Serialize concurrent builds.
if command -v flock >/dev/null 2>&1; then
	exec 9>"$CACHE_ROOT/.lock"
	flock -w 1800 9 || die "timed out waiting for $CACHE_ROOT/.lock"
fi

if complete; then
	log "up to date: $OUT"
	printf '%s\n' "$OUT"
	exit 0
fi
if [ -e "$OUT" ]; then
	log "removing incomplete $OUT"
	rm -rf "$OUT"
fi

# Leftovers of builds that were killed (builds are serialized by the lock).
rm -rf "$CACHE_ROOT"/.build-*

log "building test guest $KEY (kernel $KVER)"
TMP=$(mktemp -d "$CACHE_ROOT/.build-$KEY.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
ROOT="$TMP/rootfs"

# --- rootfs skeleton + busybox
mkdir -p "$ROOT"/{bin,dev,etc/acpi,lib/fsnap,lib/modules/fsnap,proc,sys,tmp,run,data,var/log,root}
ln -s bin "$ROOT/sbin"
ln -s . "$ROOT/usr"
cp "$BUSYBOX" "$ROOT/bin/busybox"
for applet in $("$BUSYBOX" --list); do
	[ -e "$ROOT/bin/$applet" ] || ln -s busybox "$ROOT/bin/$applet"
done
if [ "$(id -u)" = 0 ]; then
	mknod -m 600 "$ROOT/dev/console" c 5 1
	mknod -m 666 "$ROOT/dev/null" c 1 3
fi

# --- guest scripts
install -m 0755 "$FIXTURES/init" "$ROOT/init"
install -m 0644 "$FIXTURES/common.sh" "$ROOT/lib/fsnap/common.sh"
install -m 0755 "$FIXTURES/workload.sh" "$ROOT/bin/fsnap-workload"
install -m 0755 "$FIXTURES/control.sh" "$ROOT/bin/fsnap-control"
install -m 0644 "$FIXTURES/acpid.conf" "$ROOT/etc/acpid.conf"
install -m 0755 "$FIXTURES/power-button.sh" "$ROOT/etc/acpi/power-button.sh"
printf 'key=%s\nkernel=%s\n' "$KEY" "$KVER" > "$ROOT/etc/fsnap-build"

# --- kernel modules, in load order
for entry in "${WANTED_MODULES[@]}"; do
	add_module "${entry% *}" "${entry#* }"
done
{
	echo "# module required|optional (load order, generated for $KVER)"
	for m in "${MOD_ORDER[@]}"; do
		copy_module "${MOD_PATH[$m]}" "$ROOT/lib/modules/fsnap/$m.ko"
		printf '%s %s\n' "$m" "${MOD_NEED[$m]}"
	done
} > "$ROOT/etc/fsnap-modules.list"
log "modules: ${MOD_ORDER[*]}"

# --- initramfs (uncompressed newc cpio: faster to unpack under TCG)
(cd "$ROOT" && find . -mindepth 1 -print0 | LC_ALL=C sort -z \
	| cpio --null -o -H newc --quiet -R 0:0) > "$TMP/initrd.img"
rm -rf "$ROOT"

# --- kernel
cp "/boot/vmlinuz-$KVER" "$TMP/vmlinuz"
chmod 0644 "$TMP/vmlinuz" "$TMP/initrd.img"

# --- data disk: fresh, empty, fully initialised ext4 (no lazy init writes)
truncate -s "$DATA_SIZE" "$TMP/data.raw"
mkfs.ext4 -F -q -L data -E lazy_itable_init=0,lazy_journal_init=0 "$TMP/data.raw" >&2

# --- manifest (absolute final paths)
{
	printf '{\n'
	printf '  "key": %s,\n' "$(json_str "$KEY")"
	printf '  "kernel": %s,\n' "$(json_str "$OUT/vmlinuz")"
	printf '  "initrd": %s,\n' "$(json_str "$OUT/initrd.img")"
	printf '  "dataDisk": %s,\n' "$(json_str "$OUT/data.raw")"
	printf '  "kernelVersion": %s,\n' "$(json_str "$KVER")"
	printf '  "append": %s\n' "$(json_str "$APPEND")"
	printf '}\n'
} > "$TMP/manifest.json"

chmod 0755 "$TMP"
if ! mv -T "$TMP" "$OUT" 2>/dev/null; then
	complete || die "could not move $TMP to $OUT"
	log "another build finished first; using it"
fi
trap - EXIT
rm -rf "$TMP"
log "built $OUT"
printf '%s\n' "$OUT"
