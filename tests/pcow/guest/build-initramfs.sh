#!/bin/bash
# Build the Linux test-guest initramfs for the qemu-pcow end-to-end tests.
#
# usage: build-initramfs.sh OUTDIR
#
# Everything comes from Debian packages installed on the host (installed here
# with apt-get if missing): linux-image-amd64 (kernel + modules), busybox-static,
# e2fsprogs (mke2fs/e2fsck), ndctl, fio, kmod, cpio, zstd.  If PCOW_IMG names a
# binary, it is copied in (with its shared libraries) as /usr/bin/pcow-img.
#
# Output, in OUTDIR/<hash>/ (hash of all inputs; reused when unchanged):
#   vmlinuz           copy of /boot/vmlinuz-$KVER
#   vmlinux           the same kernel uncompressed (ELF, boots via PVH: ~4 s
#                     faster under TCG); only if the kernel has CONFIG_PVH
#   base.cpio.zst     busybox, modules, /init, e2fsprogs, ndctl, [pcow-img]
#                     (.cpio.gz if the kernel or host lacks zstd)
#   fio.cpio.zst      fio + its shared libraries (~80 MB unpacked, because
#                     Debian's fio links ceph/gluster/rdma); a separate layer so
#                     tests that don't need fio boot faster
#   kver              kernel version
# OUTDIR/current is a symlink to that directory; its path is printed on stdout.
#
# Linux accepts concatenated cpio archives, so the harness boots with
# base + [fio] + a per-test archive holding /test.sh (see guest.py).
#
# Env: KVER (default: newest /boot/vmlinuz-* with /lib/modules), PCOW_IMG,
#      PCOW_GUEST_REBUILD=1 to force a rebuild.
set -euo pipefail

OUTDIR=${1:?usage: $0 OUTDIR}
HERE=$(cd "$(dirname "$0")" && pwd)

log() { echo "build-initramfs: $*" >&2; }

# ---- host packages ---------------------------------------------------------
need_pkgs=()
for p in linux-image-amd64 busybox-static fio kmod cpio e2fsprogs ndctl zstd; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' ||
        need_pkgs+=("$p")
done
if ((${#need_pkgs[@]})); then
    log "installing ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2
    apt-get install -y -q --no-install-recommends "${need_pkgs[@]}" >&2
fi

# ---- kernel ------------------------------------------------------------------
if [[ -z ${KVER:-} ]]; then
    KVER=
    for v in $(ls /boot/vmlinuz-* 2>/dev/null | sed 's|^/boot/vmlinuz-||' | sort -V); do
        [[ -d /lib/modules/$v ]] && KVER=$v
    done
    [[ -n $KVER ]] || { log "no /boot/vmlinuz-* with /lib/modules"; exit 1; }
fi
KIMG=/boot/vmlinuz-$KVER
[[ -r $KIMG && -d /lib/modules/$KVER ]] || { log "kernel $KVER incomplete"; exit 1; }

# ---- cache key -------------------------------------------------------------
pkgver() { dpkg-query -W -f='${Package}=${Version}\n' "$@" 2>/dev/null || true; }
key=$( {
    cat "$0" "$HERE/init" | sha256sum
    echo "$KVER"
    sha256sum < "$KIMG"
    pkgver busybox-static fio e2fsprogs ndctl libndctl6 libc6
    [[ -n ${PCOW_IMG:-} ]] && sha256sum < "$PCOW_IMG"
    true
} | sha256sum | cut -c1-16)
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
DEST=$OUTDIR/$key
# one builder at a time (tests may start in parallel)
exec 9>"$OUTDIR/.lock"
flock 9
if [[ -f $DEST/done && -z ${PCOW_GUEST_REBUILD:-} ]]; then
    ln -sfn "$key" "$OUTDIR/current"
    echo "$OUTDIR/current"
    exit 0
fi
rm -rf "$DEST"
mkdir -p "$DEST"

if grep -q '^CONFIG_RD_ZSTD=y' "/boot/config-$KVER" 2>/dev/null && command -v zstd >/dev/null; then
    EXT=zst; compress() { zstd -q -T0 -6 -c; }
else
    EXT=gz; compress() { gzip -6 -c; }
fi

STAGE=$(mktemp -d /tmp/pcow-initramfs.XXXXXX)
FIOSTAGE=$(mktemp -d /tmp/pcow-initramfs-fio.XXXXXX)
trap 'rm -rf "$STAGE" "$FIOSTAGE"' EXIT

# Copy an ELF binary and its shared-library closure (ldd) into a stage dir.
copy_elf() {  # stage src [dst-path-in-stage]
    local st=$1 src=$2 dst=${3:-$2}
    mkdir -p "$st/$(dirname "$dst")"
    cp -L "$src" "$st/$dst"
    local lib
    for lib in $(ldd "$src" | awk '/=>/ && $3 ~ /^\// {print $3} /^[ \t]*\/[^ ]*ld-linux/ {print $1}'); do
        # keep the path the dynamic loader will look up
        if [[ ! -e $st/$lib ]]; then
            mkdir -p "$st/$(dirname "$lib")"
            cp -L "$lib" "$st/$lib"
        fi
    done
}

# ---- base layer ------------------------------------------------------------
cd "$STAGE"
mkdir -p bin sbin usr/bin usr/sbin etc proc sys dev tmp run mnt root lib64 \
         lib/x86_64-linux-gnu "lib/modules/$KVER"
cp /bin/busybox bin/busybox
for app in $(bin/busybox --list); do
    [[ $app == busybox ]] && continue
    [[ -e bin/$app ]] || ln -s busybox "bin/$app"
done
mknod -m 600 dev/console c 5 1
mknod -m 666 dev/null c 1 3

# e2fsprogs (busybox's mke2fs cannot do ext4 properly)
copy_elf "$STAGE" /sbin/mke2fs /sbin/mke2fs
copy_elf "$STAGE" /sbin/e2fsck /sbin/e2fsck
copy_elf "$STAGE" /sbin/tune2fs /sbin/tune2fs
copy_elf "$STAGE" /sbin/dumpe2fs /sbin/dumpe2fs
copy_elf "$STAGE" /sbin/debugfs /sbin/debugfs
for a in mkfs.ext4 mkfs.ext2; do rm -f "sbin/$a" "bin/$a"; ln -s mke2fs "sbin/$a"; done
for a in fsck.ext4 fsck.ext2; do ln -sf e2fsck "sbin/$a"; done
rm -f bin/mke2fs  # prefer the real one in /sbin
cp /etc/mke2fs.conf etc/
# ndctl (namespace reconfiguration: raw -> fsdax/devdax)
copy_elf "$STAGE" /usr/bin/ndctl /usr/bin/ndctl
[[ -x /usr/bin/daxctl ]] && copy_elf "$STAGE" /usr/bin/daxctl /usr/bin/daxctl
if [[ -n ${PCOW_IMG:-} ]]; then
    copy_elf "$STAGE" "$PCOW_IMG" /usr/bin/pcow-img
fi

# kernel modules: NVDIMM (ACPI NFIT + virtio-pmem), DAX, ext4 and their deps,
# in load order as resolved by modprobe from modules.dep / softdeps.
MODS="libnvdimm nfit nd_btt nd_pmem dax_pmem device_dax virtio_pci virtio_pmem
      crc32c_generic crc32c_intel crc16 mbcache jbd2 ext4 loop"
: > etc/pcow-modules
for m in $MODS; do
    modprobe -S "$KVER" --ignore-install --show-depends "$m" 2>/dev/null | awk '$1=="insmod"{print $2}'
done | awk '!seen[$0]++' | while read -r ko; do
    rel=${ko#/lib/modules/$KVER/}
    dst=lib/modules/$KVER/${rel%.xz}; dst=${dst%.zst}; dst=${dst%.gz}
    mkdir -p "$(dirname "$dst")"
    case $ko in
        *.xz) xz -dc "$ko" > "$dst" ;;
        *.zst) zstd -qdc "$ko" > "$dst" ;;
        *.gz) gzip -dc "$ko" > "$dst" ;;
        *) cp "$ko" "$dst" ;;
    esac
    echo "/$dst" >> etc/pcow-modules
done
cp "/lib/modules/$KVER"/modules.{order,builtin,builtin.modinfo} "lib/modules/$KVER/" 2>/dev/null || true
depmod -b "$STAGE" "$KVER"

install -m 755 "$HERE/init" init
echo "$KVER" > etc/pcow-kver

find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0 | compress > "$DEST/base.cpio.$EXT"

# ---- fio layer -------------------------------------------------------------
copy_elf "$FIOSTAGE" /usr/bin/fio /usr/bin/fio
(cd "$FIOSTAGE" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) |
    compress > "$DEST/fio.cpio.$EXT"

cp "$KIMG" "$DEST/vmlinuz"
# Under TCG, decompressing the xz bzImage costs ~4 s per boot.  If the kernel
# can boot through PVH (CONFIG_PVH), extract the uncompressed ELF vmlinux:
# QEMU loads it directly with -kernel (pvh.bin option ROM), no decompression.
if grep -q '^CONFIG_PVH=y' "/boot/config-$KVER" 2>/dev/null && command -v python3 >/dev/null; then
    python3 - "$KIMG" "$DEST/vmlinux" <<'PY' || log "no vmlinux extracted; booting the bzImage"
import lzma, sys, zlib
d = open(sys.argv[1], "rb").read()
for magic, dec in ((b"\xfd7zXZ\x00", lambda b: lzma.LZMADecompressor().decompress(b)),
                   (b"\x1f\x8b\x08", lambda b: zlib.decompressobj(31).decompress(b))):
    i = d.find(magic)
    while i >= 0:
        try:
            x = dec(d[i:])
        except Exception:
            x = b""
        if x[:4] == b"\x7fELF":
            open(sys.argv[2], "wb").write(x)
            sys.exit(0)
        i = d.find(magic, i + 1)
sys.exit(1)
PY
fi
echo "$KVER" > "$DEST/kver"
touch "$DEST/done"
ln -sfn "$key" "$OUTDIR/current"
# keep this build and the previous one (a running test may still use it)
ls -1dt "$OUTDIR"/????????????????/done 2>/dev/null | tail -n +3 | while read -r d; do
    rm -rf "$(dirname "$d")"
done
log "built $DEST ($(du -sh "$DEST" | cut -f1)) for kernel $KVER"
echo "$OUTDIR/current"
