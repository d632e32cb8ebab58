#!/usr/bin/env bash
#
# qemu-pcow demo (run by "make demo" after the build).
#
# A 128 GiB pcow image backs a virtual NVDIMM of a Linux guest.  The guest
# carves a 2 GiB fsdax namespace out of it, makes an ext4 file system,
# mounts it with -o dax and writes files; we take a snapshot; a second boot
# changes the files; we revert the image to the snapshot; a third boot shows
# the files exactly as they were at the snapshot.  pcow-img info between the
# steps shows how little of the 128 GiB is on disk.
#
# Files: build/demo/ (demo.pcow, console logs).  Environment: QEMU, PCOW_IMG,
# BUILD (set by make).  Exit status 0 = every step worked.
#
# Guests run under TCG: on these machines KVM is nested and does not boot
# Linux guests (ARCHITECTURE.md section 5), and the e2e tests use TCG too.
#
# Why a 2 GiB namespace and not all 128 GiB: an fsdax namespace keeps a
# struct page (64 bytes) per 4 KiB page; for 128 GiB that is 2 GiB written to
# the NVDIMM (or taken from guest RAM) before the first file.  The NVDIMM
# gets a label area (label-size=128K, the last 128 KiB of the image) so that
# the guest can create a namespace of any size with ndctl; its struct pages
# live in guest RAM (--map=mem, 32 MiB).  mkfs.ext4 initializes inode tables
# and the journal lazily and the file system is mounted with noinit_itable,
# so nothing but what ext4 really needs is written.
#
# This work is licensed under the terms of the GNU GPL, version 2 or later.

set -u
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
BUILD=${BUILD:-build}
case $BUILD in /*) bdir=$BUILD ;; *) bdir=$top/$BUILD ;; esac
QEMU=${QEMU:-$bdir/qemu-system-x86_64}
PCOW_IMG=${PCOW_IMG:-$bdir/pcow-img}
export QEMU PCOW_IMG
demo=$bdir/demo
img=$demo/demo.pcow
t_start=$(date +%s.%N)

if [ -t 1 ]; then B=$'\e[1m'; G=$'\e[32m'; R=$'\e[31m'; N=$'\e[0m'; else B= G= R= N=; fi
step=0
heading() { step=$((step + 1)); printf '\n%s== %d. %s%s\n' "$B" "$step" "$*" "$N"; }
say() { printf '   %s\n' "$*"; }
die() { printf '\n%sDEMO FAILED: %s%s\n' "$R" "$*" "$N"; exit 1; }
elapsed() { awk -v a="$t_start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.0f", b - a }'; }
img_json() { "$PCOW_IMG" info --output=json "$img"; }
jget() {    # jget KEY... : a value from pcow-img info --output=json
    img_json | python3 -c '
import json, sys
d = json.load(sys.stdin)
for k in sys.argv[1:]:
    d = d[k]
print(d)' "$@"
}
human() { numfmt --to=iec-i --suffix=B "$1" 2>/dev/null || echo "$1 bytes"; }
sizes=()
show_info() {   # show_info LABEL
    say "\$ pcow-img info demo.pcow"
    "$PCOW_IMG" info "$img" | grep -E '^(virtual size|disk size)|allocated clusters|dirty flag|^ID|^[0-9]+ ' |
        sed 's/^ */   | /'
    local vs as ac
    vs=$(jget virtual-size) as=$(jget actual-size)
    ac=$(jget format-specific data allocated-clusters)
    say "${B}=> virtual size $(human "$vs"), on disk $(human "$as") ($ac data clusters of 64 KiB)${N}"
    sizes+=("$(printf '%-34s %10s' "$1" "$(human "$as")")")
}

[ -x "$QEMU" ] || die "$QEMU not found: build first (make)"
[ -x "$PCOW_IMG" ] || die "$PCOW_IMG not found: build first (make)"
"$QEMU" -object memory-backend-file,help 2>/dev/null | grep -q 'format=' ||
    die "$QEMU has no format=pcow support"
[ "$(id -u)" = 0 ] || die "run as root (the guest is built from Debian packages)"

# boot LABEL SCRIPT-FILE: boot the guest on the image, print its output.
boot() {
    local label=$1 script=$2
    python3 - "$label" "$script" "$img" "$demo/console-$label.log" <<'EOF'
import sys, time
sys.path.insert(0, "tests/pcow/guest")
import guest
label, script, img, log = sys.argv[1:5]
args = ["-object", f"memory-backend-file,id=pm,mem-path={img},format=pcow,share=on",
        "-device", "nvdimm,id=nv0,memdev=pm,label-size=128K"]
r = guest.run(open(script).read(), args, maxmem="130G", mem="512M",
              append="no_timer_check",
              pmem=0, timeout=240, log=log)
for ln in r.output().splitlines():
    print("   guest> " + ln)
bt = f"{r.boot_time:.1f} s" if r.boot_time is not None else "-"
print(f"   (guest booted in {bt}, ran {r.total_time:.1f} s in all, "
      f"exit {r.rc}; console log {log})")
if r.qemu_stderr.strip():
    print("   qemu: " + r.qemu_stderr.strip())
sys.exit(0 if r.rc == 0 and r.qemu_rc == 0 else 1)
EOF
}

# Shell run inside the guest before each step's own commands.
GUEST_COMMON='
say() { echo "$*"; }
fail() { echo "FAILED: $*"; exit 1; }
mnt() {
    i=0; while [ ! -b /dev/pmem0 ] && [ $i -lt 50 ]; do usleep 100000; i=$((i+1)); done
    mount -o dax,noinit_itable /dev/pmem0 /mnt || fail "mount -o dax"
    grep -q " /mnt ext4 .*dax" /proc/mounts || fail "not mounted with dax"
}
'

heading "Preparing"
mkdir -p "$demo" || die "cannot create $demo"
rm -f "$img" "$demo"/console-*.log "$demo"/*.sh
say "QEMU:     $QEMU ($("$QEMU" --version | head -1))"
say "pcow-img: $PCOW_IMG"
say "Accelerator: TCG.  KVM is nested on these machines and does not boot"
say "Linux guests; TCG runs the same guest, only slower (a boot takes ~5 s on"
say "an idle host, longer under load)."
say "Building the test guest (Debian kernel + busybox initramfs, cached)..."
python3 -c 'import sys; sys.path.insert(0, "tests/pcow/guest"); import guest
print("   guest:", guest.build_initramfs())' || die "guest build failed"

heading "Create a 128 GiB pcow image"
say "\$ pcow-img create $img 128G"
"$PCOW_IMG" create "$img" 128G | sed 's/^/   | /'
[ "${PIPESTATUS[0]}" = 0 ] || die "pcow-img create failed"
show_info "new image"

heading "Boot 1: fsdax namespace, ext4 -o dax, write files"
say "QEMU: -object memory-backend-file,id=pm,mem-path=demo.pcow,format=pcow,share=on"
say "      -device nvdimm,id=nv0,memdev=pm,label-size=128K"
cat >"$demo/boot1.sh" <<EOF
$GUEST_COMMON
ndctl disable-region region0 >/dev/null 2>&1
ndctl init-labels -f nmem0 >/dev/null 2>&1 || fail "ndctl init-labels"
ndctl enable-region region0 >/dev/null 2>&1 || fail "ndctl enable-region"
ndctl create-namespace -r region0 -m fsdax --map=mem -s 2G >/tmp/ns.json 2>&1 ||
    { cat /tmp/ns.json; fail "ndctl create-namespace"; }
say "namespace: \$(tr -d ' \n' </tmp/ns.json | sed 's/.*"dev":"\([^"]*\)".*"mode":"\([^"]*\)".*"size":\([0-9]*\).*/\1 mode \2, \3 bytes/')"
say "NVDIMM region: \$(cat /sys/bus/nd/devices/region0/size) bytes; /dev/pmem0: \$(blockdev --getsize64 /dev/pmem0) bytes"
mkfs.ext4 -q -F -b 4096 -E lazy_itable_init=1,lazy_journal_init=1 -L pcowdemo /dev/pmem0 || fail mkfs.ext4
mnt
say "mounted: \$(grep ' /mnt ' /proc/mounts)"
mkdir -p /mnt/docs /mnt/data
echo "Hello from a guest on a 128 GiB thin NVDIMM" > /mnt/hello.txt
for n in 1 2 3 4 5; do echo "note \$n: written in boot 1" > /mnt/docs/note\$n.txt; done
dd if=/dev/urandom of=/mnt/data/random-4M.bin bs=64k count=64 2>/dev/null
dd if=/dev/urandom of=/mnt/data/random-1M.bin bs=64k count=16 2>/dev/null
(cd /mnt && find . -type f ! -name SUMS ! -path './lost+found/*' | sort | xargs md5sum) >/mnt/SUMS
say "files written:"; (cd /mnt && find . -type f ! -path './lost+found/*' | sort | sed 's/^/  /')
say "df: \$(df -h /mnt | tail -1)"
umount /mnt || fail umount
say "unmounted; powering off"
EOF
boot 1 "$demo/boot1.sh" || die "boot 1 failed"

heading "After boot 1: the image on disk"
say "Only what the guest wrote is on disk: the pfn/ext4 metadata and the files."
show_info "after boot 1 (mkfs + files)"

heading "Take a snapshot"
say "A snapshot freezes the current clusters; it copies no data."
say "\$ pcow-img snapshot -c before-changes demo.pcow"
"$PCOW_IMG" snapshot -c before-changes "$img" || die "snapshot -c failed"
"$PCOW_IMG" snapshot -l "$img" | sed 's/^/   | /'

heading "Boot 2: change the files (delete, modify, add)"
cat >"$demo/boot2.sh" <<EOF
$GUEST_COMMON
mnt
say "files at boot 2 start: \$(cd /mnt && find . -type f ! -path './lost+found/*' | wc -l)"
rm /mnt/docs/note2.txt /mnt/docs/note4.txt /mnt/data/random-4M.bin
say "deleted docs/note2.txt, docs/note4.txt, data/random-4M.bin"
echo "changed in boot 2" > /mnt/hello.txt
say "hello.txt now says: \$(cat /mnt/hello.txt)"
dd if=/dev/urandom of=/mnt/data/new-8M.bin bs=64k count=128 2>/dev/null
say "added data/new-8M.bin"
(cd /mnt && md5sum -c SUMS 2>/dev/null | grep -c ': OK$' | sed 's/^/files still matching the boot-1 checksums: /')
say "files now:"; (cd /mnt && find . -type f ! -path './lost+found/*' | sort | sed 's/^/  /')
umount /mnt || fail umount
EOF
boot 2 "$demo/boot2.sh" || die "boot 2 failed"
say "The changed and new blocks went to new clusters (copy on write); the"
say "snapshot still holds the old ones."
show_info "after boot 2 (changes)"

heading "Revert to the snapshot"
say "\$ pcow-img snapshot -a before-changes demo.pcow"
"$PCOW_IMG" snapshot -a before-changes "$img" || die "snapshot -a failed"
say "The clusters written after the snapshot are freed again."
show_info "after snapshot -a"

heading "Boot 3: the files are back as they were at the snapshot"
cat >"$demo/boot3.sh" <<EOF
$GUEST_COMMON
mnt
say "hello.txt says: \$(cat /mnt/hello.txt)"
[ -e /mnt/data/new-8M.bin ] && fail "new-8M.bin (written after the snapshot) is still there"
say "data/new-8M.bin (added in boot 2) is gone"
say "checking every file against the checksums written in boot 1:"
(cd /mnt && md5sum -c SUMS) | sed 's/^/  /'
(cd /mnt && md5sum -c SUMS >/dev/null 2>&1) || fail "checksums differ"
say "all \$(wc -l < /mnt/SUMS) files are exactly as at the snapshot"
umount /mnt || fail umount
e2fsck -fn /dev/pmem0 >/tmp/fsck 2>&1 || { cat /tmp/fsck; fail "e2fsck"; }
say "e2fsck -fn: clean"
EOF
boot 3 "$demo/boot3.sh" || die "boot 3 failed"

heading "Final check of the image"
"$PCOW_IMG" check "$img" | sed 's/^/   | /'
[ "${PIPESTATUS[0]}" = 0 ] || die "pcow-img check reports problems"
show_info "at the end"

heading "Summary: disk usage of the 128 GiB image"
for l in "${sizes[@]}"; do say "$l"; done
printf '\n%sDemo finished in %s s: a 128 GiB virtual NVDIMM, %s on disk, snapshot\nand revert worked.  Image and console logs in %s%s\n' \
    "$G" "$(elapsed)" "$(human "$(jget actual-size)")" "$demo" "$N"
