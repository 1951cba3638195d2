#!/usr/bin/env bash
# Build the forksnap DB-server guest image: Debian bookworm (minbase) with
# systemd, PostgreSQL 15, acpid and the guest-side files from
# test/fixtures/db-guest/ (see the README there for the guest contract).
#
# Output: ${FORKSNAP_CACHE_DIR:-/var/cache/forksnap}/db-guest/<key>/
#   root.qcow2     ext4 filesystem on the whole disk (guest sees /dev/vda)
#   vmlinuz        kernel for direct boot (-kernel)
#   vmlinux        the same kernel uncompressed (PVH ELF, also works with
#                  -kernel and boots ~4 s faster under TCG)
#   initrd.img     initramfs (-initrd)
#   manifest.json  absolute paths, disk format, kernel append line
# <key> = first 16 hex digits of sha256 over this script and every file under
# test/fixtures/db-guest/. A complete directory is never rebuilt; builds happen
# in a temporary directory that is renamed into place. The output directory is
# printed as the last line on stdout; everything else goes to stderr.
#
# Environment:
#   FORKSNAP_CACHE_DIR      cache root (default /var/cache/forksnap)
#   FORKSNAP_DEBIAN_MIRROR  Debian mirror (default http://deb.debian.org/debian)
set -euo pipefail

exec 3>&1 1>&2   # fd 3 = real stdout (result only); all chatter to stderr

SCRIPT=$(readlink -f "${BASH_SOURCE[0]}")
REPO=$(cd "$(dirname "$SCRIPT")/.." && pwd)
FIX=$REPO/test/fixtures/db-guest
CACHE=${FORKSNAP_CACHE_DIR:-/var/cache/forksnap}
BASE=$(realpath -m "$CACHE/db-guest")
MIRROR=${FORKSNAP_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
PG_MAJOR=15
PG_CLUSTER=main
DISK_SIZE=4G
APPEND="root=/dev/vda rw console=ttyS0 quiet"
APT_LOCK=(-o DPkg::Lock::Timeout=600)

log() { printf '[build-db-guest] %s\n' "$*" >&2; }
trap 'rc=$?; log "FAILED (exit $rc) at line $LINENO: $BASH_COMMAND"' ERR
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot)"
[ -d "$FIX/rootfs" ] || die "missing $FIX/rootfs"

# ---- key -------------------------------------------------------------------
compute_key() {
	{
		printf 'script\n'
		sha256sum <"$SCRIPT"
		(cd "$FIX" && find . -type f -print0 | LC_ALL=C sort -z |
			while IFS= read -r -d '' f; do
				printf '%s\n' "$f"
				sha256sum <"$f"
			done)
	} | sha256sum | cut -c1-16
}
KEY=$(compute_key)
FINAL=$BASE/$KEY

done_already() {
	if [ -f "$FINAL/manifest.json" ]; then
		log "up to date: $FINAL"
		printf '%s\n' "$FINAL" >&3
		exit 0
	fi
}
done_already

mkdir -p "$BASE"
exec 9>"$BASE/.lock-$KEY"
log "waiting for build lock $BASE/.lock-$KEY"
flock 9
done_already   # another process may have finished it meanwhile

# ---- helpers ---------------------------------------------------------------
# Unmount everything below $1 (deepest first), then delete it without ever
# crossing into another filesystem.
umount_below() {
	local dir=$1 m
	[ -e "$dir" ] || return 0
	dir=$(readlink -f "$dir")
	while read -r m; do
		[ -n "$m" ] || continue
		umount "$m" 2>/dev/null || umount -l "$m" || true
	done < <(awk -v d="$dir/" 'index($2 "/", d) == 1 { print $2 }' /proc/self/mounts | sort -r)
}
remove_tree() {
	local dir=$1
	[ -e "$dir" ] || return 0
	umount_below "$dir"
	if awk -v d="$(readlink -f "$dir")/" 'index($2 "/", d) == 1 { found=1 } END { exit !found }' /proc/self/mounts; then
		log "WARNING: mounts still present below $dir, not deleting it"
		return 0
	fi
	rm -rf --one-file-system "$dir"
}

# Stale temp dirs of this key (crashed earlier build); we hold the lock.
for stale in "$BASE"/.build-"$KEY".*; do
	[ -e "$stale" ] || continue
	log "removing stale $stale"
	remove_tree "$stale"
done

# ---- host tools ------------------------------------------------------------
need_pkgs=()
command -v debootstrap >/dev/null || need_pkgs+=(debootstrap)
command -v qemu-img >/dev/null || need_pkgs+=(qemu-utils)
command -v mkfs.ext4 >/dev/null || need_pkgs+=(e2fsprogs)
command -v flock >/dev/null || need_pkgs+=(util-linux)
command -v xz >/dev/null || need_pkgs+=(xz-utils)
if [ ${#need_pkgs[@]} -gt 0 ]; then
	log "installing host packages: ${need_pkgs[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get "${APT_LOCK[@]}" install -y --no-install-recommends "${need_pkgs[@]}" ||
		{ apt-get "${APT_LOCK[@]}" update && apt-get "${APT_LOCK[@]}" install -y --no-install-recommends "${need_pkgs[@]}"; }
fi

# ---- build -----------------------------------------------------------------
WORK=$(mktemp -d "$BASE/.build-$KEY.XXXXXX")
ROOT=$WORK/rootfs
OUT=$WORK/out
mkdir -p "$ROOT" "$OUT"
trap 'remove_tree "$WORK"' EXIT
trap 'exit 130' INT TERM HUP
T0=$(date +%s)

log "debootstrap $SUITE (minbase) from $MIRROR into $ROOT"
debootstrap --variant=minbase --include=systemd-sysv,udev \
	"$SUITE" "$ROOT" "$MIRROR" >&2

in_root() {
	chroot "$ROOT" /usr/bin/env -i \
		PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 LC_ALL=C.UTF-8 TZ=UTC \
		DEBIAN_FRONTEND=noninteractive DEBCONF_NONINTERACTIVE_SEEN=true "$@"
}

mount -t proc proc "$ROOT/proc"
mount -t sysfs sysfs "$ROOT/sys"
mount -t tmpfs -o mode=1777 tmpfs "$ROOT/dev/shm"
mount -t tmpfs -o mode=755 tmpfs "$ROOT/run"
mkdir -p "$ROOT/run/lock"
cp /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true

# No daemons may start inside the chroot.
printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
chmod 755 "$ROOT/usr/sbin/policy-rc.d"

install -m 644 "$FIX/dpkg-excludes.cfg" "$ROOT/etc/dpkg/dpkg.cfg.d/01-fsnap-excludes"
cat >"$ROOT/etc/apt/apt.conf.d/01-fsnap" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
EOF
printf 'deb %s %s main\n' "$MIRROR" "$SUITE" >"$ROOT/etc/apt/sources.list"

# Guest files (PostgreSQL conf.d comes after the cluster exists).
log "installing fixture files"
(cd "$FIX/rootfs" && find . -type d -print0 | while IFS= read -r -d '' d; do
	install -d -m 755 "$ROOT/$d"
done)
(cd "$FIX/rootfs" && find . -type f -print0 | while IFS= read -r -d '' f; do
	case "$f" in
	./usr/local/sbin/* | ./etc/initramfs-tools/hooks/*) mode=755 ;;
	*) mode=644 ;;
	esac
	install -m "$mode" "$f" "$ROOT/$f"
done)

# Fixed identity: a stable machine-id also avoids systemd "first boot" handling
# (preset-all etc.) each time the pristine image boots.
printf '%s\n' "$(printf 'forksnap-db-guest-%s' "$KEY" | sha256sum | cut -c1-32)" >"$ROOT/etc/machine-id"
echo fsnap-db >"$ROOT/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tfsnap-db\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$ROOT/etc/hosts"
printf '/dev/vda\t/\text4\trw,noatime\t0\t0\n' >"$ROOT/etc/fstab"

log "apt-get install (kernel, postgresql, perl DBD::Pg, acpid)"
in_root apt-get "${APT_LOCK[@]}" update
in_root apt-get "${APT_LOCK[@]}" install -y --no-install-recommends \
	linux-image-amd64 "postgresql-$PG_MAJOR" postgresql libdbd-pg-perl acpid kmod >&2

PGCONF=/etc/postgresql/$PG_MAJOR/$PG_CLUSTER
[ -f "$ROOT$PGCONF/postgresql.conf" ] || die "cluster $PG_MAJOR/$PG_CLUSTER was not created"
# (uid/gid of "postgres" are the guest's, so chown inside the chroot)
in_root install -d -o postgres -g postgres -m 755 "$PGCONF/conf.d"
install -m 644 "$FIX/postgresql/fsnap.conf" "$ROOT$PGCONF/conf.d/fsnap.conf"
in_root chown postgres:postgres "$PGCONF/conf.d/fsnap.conf"
grep -q "^include_dir = 'conf.d'" "$ROOT$PGCONF/postgresql.conf" || die "postgresql.conf lacks include_dir conf.d"

log "configuring systemd units"
in_root systemctl set-default multi-user.target
in_root systemctl enable fsnap-ctl.service fsnap-dbreport.service fsnap-load.service acpid.service
# Things that cost boot time under TCG and are useless in this guest.
in_root systemctl mask \
	apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer \
	e2scrub_all.timer e2scrub_reap.service fstrim.timer man-db.timer \
	systemd-tmpfiles-clean.timer \
	systemd-networkd-wait-online.service systemd-networkd.service \
	systemd-timesyncd.service systemd-logind.service getty@tty1.service \
	systemd-hwdb-update.service ldconfig.service systemd-journal-catalog-update.service \
	systemd-update-done.service systemd-pstore.service systemd-firstboot.service \
	getty-static.service systemd-random-seed.service systemd-journal-flush.service \
	systemd-update-utmp.service systemd-update-utmp-runlevel.service \
	modprobe@drm.service modprobe@efi_pstore.service modprobe@fuse.service \
	modprobe@configfs.service modprobe@dm_mod.service modprobe@loop.service \
	sys-kernel-debug.mount sys-kernel-tracing.mount sys-kernel-config.mount \
	sys-fs-fuse-connections.mount dev-hugepages.mount dev-mqueue.mount
# Passwordless root on the serial console (throwaway test guest, no network).
in_root passwd -d root >/dev/null

log "cleaning up the root filesystem"
in_root apt-get clean
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin \
	"$ROOT"/var/cache/debconf/*-old "$ROOT"/var/lib/dpkg/*-old \
	"$ROOT"/var/log/apt "$ROOT"/var/log/*.log "$ROOT"/var/log/journal \
	"$ROOT"/tmp/* "$ROOT"/var/tmp/* "$ROOT"/root/.bash_history \
	"$ROOT"/var/cache/ldconfig/aux-cache
# debootstrap's own packages were unpacked before the dpkg excludes existed.
find "$ROOT/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete 2>/dev/null || true
find "$ROOT/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
rm -rf "$ROOT"/usr/share/man/* "$ROOT"/usr/share/info/*
find "$ROOT/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} + 2>/dev/null || true
: >"$ROOT/etc/resolv.conf"
rm -f "$ROOT/usr/sbin/policy-rc.d"
# Start with an empty PostgreSQL log (keep file, owner and mode).
for f in "$ROOT"/var/log/postgresql/*.log; do [ -f "$f" ] && : >"$f"; done
# Tell ConditionNeedsUpdate= units that /etc and /var are current.
touch "$ROOT/etc/.updated" "$ROOT/var/.updated"

umount_below "$ROOT"

kver=$(cd "$ROOT/boot" && ls vmlinuz-* | sed 's/^vmlinuz-//' | sort -V | tail -n1)
[ -n "$kver" ] || die "no kernel in $ROOT/boot"
install -m 644 "$ROOT/boot/vmlinuz-$kver" "$OUT/vmlinuz"
install -m 644 "$ROOT/boot/initrd.img-$kver" "$OUT/initrd.img"
# Also the uncompressed kernel (ELF with a PVH entry point; QEMU's -kernel
# boots it directly). It skips the in-guest xz decompression of vmlinuz,
# which takes ~4 s under TCG.
xz_offs=$(LC_ALL=C grep -abo $'\xfd7zXZ' "$OUT/vmlinuz" | cut -d: -f1) || true
xz_off=${xz_offs%%$'\n'*}
[ -n "$xz_off" ] || die "vmlinuz: no xz payload found"
tail -c +"$((xz_off + 1))" "$OUT/vmlinuz" >"$WORK/vmlinux.xz"
xz -dc --single-stream "$WORK/vmlinux.xz" >"$OUT/vmlinux"
rm -f "$WORK/vmlinux.xz"
[ "$(head -c 4 "$OUT/vmlinux" | od -An -tx1 | tr -d ' ')" = 7f454c46 ] || die "vmlinux extraction failed"
chmod 644 "$OUT/vmlinux"
pgver=$(in_root dpkg-query -W -f '${Version}' "postgresql-$PG_MAJOR")

log "creating ext4 image ($DISK_SIZE)"
fs_uuid=$(printf 'fs-%s' "$KEY" | sha256sum | sed -E 's/^(.{8})(.{4})(.{4})(.{4})(.{12}).*/\1-\2-\3-\4-\5/')
hash_seed=$(printf 'hash-%s' "$KEY" | sha256sum | sed -E 's/^(.{8})(.{4})(.{4})(.{4})(.{12}).*/\1-\2-\3-\4-\5/')
truncate -s "$DISK_SIZE" "$WORK/root.raw"
E2FSPROGS_FAKE_TIME=${SOURCE_DATE_EPOCH:-1700000000} \
	mkfs.ext4 -q -F -L fsnap-root -U "$fs_uuid" -m 1 \
	-E "hash_seed=$hash_seed,lazy_itable_init=0,lazy_journal_init=0" \
	-d "$ROOT" "$WORK/root.raw"
e2fsck -fn "$WORK/root.raw" >&2
qemu-img convert -f raw -O qcow2 "$WORK/root.raw" "$OUT/root.qcow2"
rm -f "$WORK/root.raw"
remove_tree "$ROOT"

cat >"$OUT/manifest.json" <<EOF
{
  "name": "forksnap-db-guest",
  "key": "$KEY",
  "dir": "$FINAL",
  "disk": "$FINAL/root.qcow2",
  "disk_format": "qcow2",
  "kernel": "$FINAL/vmlinuz",
  "kernel_pvh": "$FINAL/vmlinux",
  "initrd": "$FINAL/initrd.img",
  "append": "$APPEND",
  "load_append": "fsnap.load=1",
  "root_device": "/dev/vda",
  "console_serial": "ttyS0",
  "control_serial": "ttyS1",
  "kernel_version": "$kver",
  "postgresql_version": "$pgver",
  "postgresql_log": "/var/log/postgresql/postgresql-$PG_MAJOR-$PG_CLUSTER.log",
  "debian_suite": "$SUITE"
}
EOF
sync -f "$OUT/root.qcow2" 2>/dev/null || sync
mv -T "$OUT" "$FINAL"
log "built $FINAL in $(($(date +%s) - T0))s ($(du -sh --apparent-size "$FINAL/root.qcow2" | cut -f1) qcow2)"
printf '%s\n' "$FINAL" >&3
