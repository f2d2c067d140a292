#!/bin/bash
# Build the gateway VM image (docs/deploy.md "The gateway VM image"):
#
#   deploy/gateway-image/build.sh [OUTPUT.qcow2]      (default: build/gateway.qcow2; run as root)
#
# 1. base root: debootstrap bookworm with the packages in ./packages, upgraded from bookworm-updates and
#    bookworm-security; kept as a tarball in the cache, keyed by the package list and this script's base
#    step, so a second build starts from it (the slow part is here: about a minute from a warm .deb cache)
# 2. our layer: a venv /opt/nvfabric with the project's wheel and its dependencies (wheels built on this
#    host, installed by the image's own Python in a chroot), /usr/bin/nvfabric, the systemd unit and
#    the files in ./rootfs (cloud-init's datasources, the unit's ordering after cloud-init, grub.cfg)
# 3. the disk, without loop devices or mounts: mkfs.ext4 -d fills the root partition from the directory,
#    sfdisk writes an MBR partition table, GRUB's boot.img and a core.img from grub-mkimage go into the
#    MBR and the gap before the partition (BIOS boot: SeaBIOS under plain qemu, and the BIOS mode every
#    cloud hypervisor offers); qemu-img converts the raw disk to a compressed qcow2.
#
# Environment: NVFABRIC_IMAGE_CACHE (default ~/.cache/nvfabric/image), DEBIAN_MIRROR
# (http://deb.debian.org/debian), DEBIAN_SECURITY (http://deb.debian.org/debian-security),
# IMAGE_SIZE (the disk's virtual size, default 2G; cloud-init grows the root to a bigger disk).
set -euo pipefail

HERE=$(dirname "$(readlink -f "$0")")
REPO=$(readlink -f "$HERE/../..")
OUTPUT=$(readlink -f "${1:-$REPO/build/gateway.qcow2}")
CACHE=${NVFABRIC_IMAGE_CACHE:-$HOME/.cache/nvfabric/image}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY=${DEBIAN_SECURITY:-http://deb.debian.org/debian-security}
SUITE=bookworm
IMAGE_SIZE=${IMAGE_SIZE:-2G}
# The root file system's UUID: fixed, so grub.cfg and fstab name it without a build-time lookup; every
# VM from this image has its own disk, and the hypervisor never sees two of them at once.
ROOT_UUID=6e7f1a3c-9b2d-4c5e-8f10-2a4b6c8d0e1f
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
UNIT=$REPO/deploy/systemd/nvfabric-gateway.service

say() { printf '%s gateway-image: %s\n' "$(date +%T)" "$*" >&2; }
die() { say "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (debootstrap and chroot need it)"
for tool in debootstrap mkfs.ext4 sfdisk grub-mkimage qemu-img; do
	command -v $tool >/dev/null || die "$tool is missing: make system (Makefile APT_PACKAGES) installs it"
done
[ -f /usr/lib/grub/i386-pc/boot.img ] || die "/usr/lib/grub/i386-pc/boot.img is missing: install grub-pc-bin"
[ -f "$UNIT" ] || die "$UNIT is missing"
[ -x "$PYTHON" ] || die "$PYTHON is missing: make venv"

mkdir -p "$CACHE/debs" "$CACHE/wheels" "$(dirname "$OUTPUT")"
WORK=$(mktemp -d "$(dirname "$OUTPUT")/.gateway-image.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
ROOT=$WORK/root
PACKAGES=$(grep -v '^#' "$HERE/packages" | grep -v '^$' | paste -sd, -)

# --- 1. the base root, cached ----------------------------------------------------------------------------
# The key covers what decides the base: the package list, the suite and mirrors, and this step's code.
BASE_STEP_VERSION=1
key=$(printf '%s\n' "$PACKAGES" "$SUITE" "$MIRROR" "$SECURITY" "$BASE_STEP_VERSION" | sha256sum | cut -c1-16)
BASE=$CACHE/base-$SUITE-$key.tar
if [ ! -f "$BASE" ]; then
	say "base root: debootstrap $SUITE (no cached base $BASE)"
	debootstrap --variant=minbase --include="$PACKAGES" --cache-dir="$CACHE/debs" \
		"$SUITE" "$ROOT" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || {
		tail -30 "$WORK/debootstrap.log"; tail -30 "$ROOT/debootstrap/debootstrap.log" 2>/dev/null
		die "debootstrap failed"; }
	rm -f "$ROOT/etc/apt/sources.list"
	cat >"$ROOT/etc/apt/sources.list.d/debian.sources" <<-EOF
	Types: deb
	URIs: $MIRROR
	Suites: $SUITE $SUITE-updates
	Components: main
	Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

	Types: deb
	URIs: $SECURITY
	Suites: $SUITE-security
	Components: main
	Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
	EOF
	say "base root: upgrading from $SUITE-updates and $SUITE-security"
	# the .deb cache serves apt too (copied in and out: no bind mount)
	cp -n "$CACHE/debs/"*.deb "$ROOT/var/cache/apt/archives/" 2>/dev/null || true
	chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin DEBIAN_FRONTEND=noninteractive \
		sh -c 'apt-get -qq update && apt-get -y -qq -o Dpkg::Options::=--force-confold dist-upgrade &&
		       apt-get -y -qq autoremove --purge' >"$WORK/upgrade.log" 2>&1 || {
		tail -30 "$WORK/upgrade.log"; die "apt-get dist-upgrade in the image failed"; }
	# the kernel the upgrade replaced: only the newest stays (the metapackage follows the updates)
	new=$(readlink "$ROOT/vmlinuz" | sed 's|.*/vmlinuz-||')
	old=$(chroot "$ROOT" dpkg-query -W -f='${Package}\n' 'linux-image-*-cloud-amd64' | grep -v "$new" || true)
	[ -z "$old" ] || chroot "$ROOT" env DEBIAN_FRONTEND=noninteractive apt-get -y -qq purge $old >>"$WORK/upgrade.log" 2>&1
	cp -n "$ROOT/var/cache/apt/archives/"*.deb "$CACHE/debs/" 2>/dev/null || true
	chroot "$ROOT" apt-get -qq clean
	rm -rf "$ROOT/var/lib/apt/lists/"* "$ROOT/debootstrap"
	tar --numeric-owner --xattrs --xattrs-include='*' -C "$ROOT" -cf "$BASE.tmp" . && mv "$BASE.tmp" "$BASE"
	# one base is kept: an older package list's would only fill the disk
	find "$CACHE" -maxdepth 1 -name 'base-*.tar' ! -name "$(basename "$BASE")" -delete
	say "base root cached: $BASE ($(du -h "$BASE" | cut -f1))"
else
	say "base root: from the cache ($BASE)"
	mkdir "$ROOT"
	tar --numeric-owner --xattrs --xattrs-include='*' -C "$ROOT" -xf "$BASE"
fi

# --- 2. our layer --------------------------------------------------------------------------------------
say "wheels: the project and its dependencies"
# The wheels are built by the host's Python for the image's: compiled ones (aiohttp, PyYAML) carry the
# Python version in their tag, so both must be the same X.Y.
ours=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
theirs=$(chroot "$ROOT" /usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$ours" = "$theirs" ] || die "PYTHON=$PYTHON is Python $ours, the image's is $theirs: name a $theirs one in PYTHON"
# Dependencies' wheels accumulate in the cache; the project's own wheel is built fresh every time, without
# setuptools' in-tree build/lib of an earlier build (a module since deleted would ride along).
rm -rf "$REPO/build/lib" "$REPO/build/bdist.linux-x86_64"
"$PYTHON" -m pip wheel -q --disable-pip-version-check --no-deps -w "$WORK/wheels" "$REPO" >"$WORK/pip.log" 2>&1 || {
	cat "$WORK/pip.log"; die "building the nvfabric wheel failed"; }
"$PYTHON" -m pip wheel -q --disable-pip-version-check -w "$CACHE/wheels" --find-links "$CACHE/wheels" \
	"$(ls "$WORK/wheels/"nvfabric-*.whl)" >"$WORK/pip.log" 2>&1 || {
	cat "$WORK/pip.log"; die "fetching the dependencies' wheels failed"; }
rm -f "$CACHE/wheels/"nvfabric-*.whl
cp "$CACHE/wheels/"*.whl "$WORK/wheels/"
mkdir -p "$ROOT/tmp/wheels" && cp "$WORK/wheels/"*.whl "$ROOT/tmp/wheels/"
say "venv: /opt/nvfabric"
chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin sh -c \
	'python3 -m venv /opt/nvfabric &&
	 /opt/nvfabric/bin/pip install -q --disable-pip-version-check --no-index --find-links /tmp/wheels nvfabric &&
	 /opt/nvfabric/bin/pip uninstall -q -y pip setuptools' >"$WORK/venv.log" 2>&1 || {
	cat "$WORK/venv.log"; die "installing nvfabric into the image's venv failed"; }
rm -rf "$ROOT/tmp/wheels"
find "$ROOT/opt/nvfabric" -name __pycache__ -prune -exec rm -rf {} +
# compiled by the image's own Python: the first start under a slow hypervisor skips the compiling
chroot "$ROOT" /opt/nvfabric/bin/python -m compileall -q /opt/nvfabric/lib >/dev/null
ln -sf /opt/nvfabric/bin/nvfabric "$ROOT/usr/bin/nvfabric"
version=$(chroot "$ROOT" /usr/bin/nvfabric --version 2>/dev/null || chroot "$ROOT" /opt/nvfabric/bin/python -c \
	'import importlib.metadata as m; print("nvfabric", m.version("nvfabric"))')
say "installed: $version"

say "files: unit, cloud-init, grub, fstab"
cp -a "$HERE/rootfs/." "$ROOT/"
# where `make install` puts it too; /etc/systemd/system stays the operator's (overrides, drop-ins)
install -D -m 0644 "$UNIT" "$ROOT/usr/local/lib/systemd/system/nvfabric-gateway.service"
for f in rr agent gateway; do
	[ ! -f "$REPO/deploy/etc/nvfabric/$f.yaml" ] || install -D -m 0644 "$REPO/deploy/etc/nvfabric/$f.yaml" \
		"$ROOT/usr/share/nvfabric/examples/$f.yaml"
done
sed -i "s/@ROOT_UUID@/$ROOT_UUID/g" "$ROOT/boot/grub/grub.cfg" "$ROOT/etc/fstab"
echo nvfabric-gateway >"$ROOT/etc/hostname"
printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$ROOT/etc/hosts"
chroot "$ROOT" systemctl -q enable systemd-networkd.service ssh.service nvfabric-gateway.service
# the gateway starts its own conntrackd with the sync link's configuration (gateway/conntrackd.py)
chroot "$ROOT" systemctl -q disable conntrackd.service 2>/dev/null || true
chroot "$ROOT" systemctl -q mask conntrackd.service
# per-VM identity, made at first boot: machine-id by systemd, SSH host keys by cloud-init
: >"$ROOT/etc/machine-id"
rm -f "$ROOT/var/lib/dbus/machine-id" "$ROOT/etc/ssh/ssh_host_"*
rm -rf "$ROOT/var/lib/cloud/"* "$ROOT/var/log/"*.log "$ROOT/tmp/"* "$ROOT/root/.cache"
# documentation and translations an appliance never shows (dpkg keeps them out of later updates too)
cat >"$ROOT/etc/dpkg/dpkg.cfg.d/nvfabric-nodoc" <<-EOF
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/locale/*
path-exclude=/usr/share/info/*
EOF
find "$ROOT/usr/share/doc" -type f ! -name copyright -delete
rm -rf "$ROOT/usr/share/man/"* "$ROOT/usr/share/locale/"* "$ROOT/usr/share/info/"*

# --- 3. the disk ---------------------------------------------------------------------------------------
say "disk: ext4 root from the directory, MBR, GRUB (BIOS)"
SECTOR=512
START=2048  # 1 MiB: the gap before the partition holds GRUB's core.img
DISK=$WORK/disk.raw
truncate -s "$IMAGE_SIZE" "$DISK"
disk_bytes=$(stat -c %s "$DISK")
part_sectors=$((disk_bytes / SECTOR - START))
mkfs.ext4 -q -F -d "$ROOT" -L nvfabric-root -U "$ROOT_UUID" -E root_owner=0:0 "$WORK/root.ext4" \
	"$((part_sectors / 2))k" >"$WORK/mkfs.log" 2>&1 || { cat "$WORK/mkfs.log"; die "mkfs.ext4 -d failed"; }
printf 'label: dos\nstart=%d, size=%d, type=83, bootable\n' "$START" "$part_sectors" |
	sfdisk -q "$DISK" >"$WORK/sfdisk.log" 2>&1 || { cat "$WORK/sfdisk.log"; die "sfdisk failed"; }
dd if="$WORK/root.ext4" of="$DISK" bs=1M seek=1 conv=notrunc,sparse status=none
# core.img: GRUB with what reads the partition and boots Linux built in; grub.cfg lives in the root file
# system (/boot/grub/grub.cfg), so a kernel update needs no GRUB reinstall (/vmlinuz, /initrd.img follow it)
grub-mkimage -O i386-pc -o "$WORK/core.img" -p "(hd0,msdos1)/boot/grub" \
	biosdisk part_msdos ext2 normal linux echo test serial terminal configfile search search_fs_uuid
core_sectors=$(( ($(stat -c %s "$WORK/core.img") + SECTOR - 1) / SECTOR ))
[ "$core_sectors" -lt "$START" ] || die "core.img ($core_sectors sectors) does not fit before the partition"
# boot.img's code only (446 bytes would overwrite the partition table's first bytes: keep 440, the
# disk signature and the table after it stay); it loads core.img from sector 1, its built-in default
dd if=/usr/lib/grub/i386-pc/boot.img of="$DISK" bs=440 count=1 conv=notrunc status=none
dd if="$WORK/core.img" of="$DISK" bs=$SECTOR seek=1 conv=notrunc status=none

say "qcow2: $OUTPUT"
qemu-img convert -c -O qcow2 "$DISK" "$OUTPUT.tmp"
mv "$OUTPUT.tmp" "$OUTPUT"
printf '%s\n' "$version" >"${OUTPUT%.qcow2}.version"
say "done: $OUTPUT $(du -h --apparent-size "$OUTPUT" | cut -f1) (virtual $IMAGE_SIZE; root $(du -sh "$ROOT" | cut -f1)), $version"
