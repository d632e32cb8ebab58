#!/usr/bin/env bash
#
# The fork's qemu-img, qemu-io and qemu-nbd must never touch a pcow image
# (issue 16 item 9).  Probed, or opened explicitly as raw or file, or as a
# create target, a file holding the pcow magic is refused with one line
# "<file> is a pcow image: use pcow-img" and a non-zero exit, and the image
# stays byte-identical.  Controls: qcow2 and raw files, even pcow-named
# ones, still work.
#
# Environment: QEMU (qemu-system-x86_64; the tools are taken from its
# directory unless QEMU_IMG, QEMU_IO, QEMU_NBD are set), PCOW_IMG.
# Exit: 0 pass, 77 skip, 1 fail.
#
# This work is licensed under the terms of the GNU GPL, version 2 or later.

set -u

QEMU=${QEMU:-}
PCOW_IMG=${PCOW_IMG:-}
bindir=$(dirname "${QEMU:-.}")
QEMU_IMG=${QEMU_IMG:-$bindir/qemu-img}
QEMU_IO=${QEMU_IO:-$bindir/qemu-io}
QEMU_NBD=${QEMU_NBD:-$bindir/qemu-nbd}
if [ ! -x "$QEMU_IMG" ]; then
    echo "SKIP: no qemu-img ('$QEMU_IMG')"
    exit 77
fi
if [ -z "$PCOW_IMG" ] || [ ! -x "$PCOW_IMG" ]; then
    echo "SKIP: PCOW_IMG is not set to an executable ('$PCOW_IMG')"
    exit 77
fi

tmp=$(mktemp -d /tmp/pcow-qemu-img.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp" || exit 1

fails=0
count=0
ok()   { count=$((count + 1)); echo "ok   $*"; }
fail() { count=$((count + 1)); fails=$((fails + 1)); echo "FAIL $*"; }

"$PCOW_IMG" create -q -f pcow x.pcow 64M || { echo "FAIL pcow-img create"; exit 1; }
cp x.pcow x.orig
# An image whose slot A is torn: only slot B (current after one header
# commit, here a snapshot) holds the magic.  pcow-img still opens it.
cp x.pcow b.pcow
"$PCOW_IMG" snapshot -c s1 b.pcow || { echo "FAIL pcow-img snapshot"; exit 1; }
printf '\0\0\0\0' | dd of=b.pcow conv=notrunc status=none
cp b.pcow b.orig
"$PCOW_IMG" info b.pcow >/dev/null || { echo "FAIL pcow-img info b.pcow"; exit 1; }

# refused FILE CMD...: CMD exits non-zero, prints exactly one line naming
# FILE as a pcow image, and FILE is unchanged.  qemu-img create adds its
# own hint line "Could not open backing image." for a backing file: that
# line alone is not counted.
refused() {
    local f=$1 rc lines
    shift
    timeout 30 "$@" >out.txt 2>err.txt </dev/null
    rc=$?
    lines=$(cat out.txt err.txt | grep -vc '^Could not open backing image\.$')
    if [ "$rc" -eq 0 ] || [ "$rc" -ge 124 ]; then
        fail "$*: exit $rc, want a refusal:" \
             "$(cat out.txt err.txt | head -c 300)"
    elif [ "$lines" -ne 1 ] ||
         ! grep -q "$f is a pcow image: use pcow-img" err.txt; then
        fail "$*: want one line '$f is a pcow image: use pcow-img', got:" \
             "$(cat out.txt err.txt | head -c 300)"
    elif ! cmp -s "$f" "${f%.pcow}.orig"; then
        fail "$*: $f changed"
    else
        ok "$* -> $(cat err.txt)"
    fi
    cp "${f%.pcow}.orig" "$f"
}

refused x.pcow "$QEMU_IMG" info x.pcow
refused x.pcow "$QEMU_IMG" info -f raw x.pcow
refused x.pcow "$QEMU_IMG" info -f file x.pcow
refused x.pcow "$QEMU_IMG" info --image-opts driver=raw,file.filename=x.pcow
refused x.pcow "$QEMU_IMG" check x.pcow
refused x.pcow "$QEMU_IMG" resize x.pcow +1G
refused x.pcow "$QEMU_IMG" resize -f raw x.pcow +1G
refused x.pcow "$QEMU_IMG" resize -f raw --shrink x.pcow 4096
refused x.pcow "$QEMU_IMG" convert -O raw x.pcow y.raw
refused x.pcow "$QEMU_IMG" create -q -f raw x.pcow 1M
refused x.pcow "$QEMU_IMG" create -q -f qcow2 x.pcow 1M
refused x.pcow "$QEMU_IMG" create -q -f qcow2 -b x.pcow -F raw z.qcow2
refused x.pcow "$QEMU_IMG" snapshot -c s1 x.pcow
refused b.pcow "$QEMU_IMG" info b.pcow
refused b.pcow "$QEMU_IMG" resize -f raw b.pcow +1G
if [ -x "$QEMU_IO" ]; then
    refused x.pcow "$QEMU_IO" -c 'write -P 0xab 0 4k' x.pcow
    refused x.pcow "$QEMU_IO" -f raw -c 'write -P 0xab 0 4k' x.pcow
    refused b.pcow "$QEMU_IO" -f raw -c 'write -P 0xab 0 4k' b.pcow
else
    echo "note: no qemu-io ('$QEMU_IO'): its checks skipped"
fi
if [ -x "$QEMU_NBD" ]; then
    refused x.pcow "$QEMU_NBD" -k "$tmp/nbd.sock" -f raw x.pcow
else
    echo "note: no qemu-nbd ('$QEMU_NBD'): its checks skipped"
fi

# Controls: other files keep working, pcow-named or not.
if "$QEMU_IMG" create -q -f qcow2 q.pcow 1M &&
   "$QEMU_IMG" info q.pcow | grep -q '^file format: qcow2' &&
   "$QEMU_IMG" resize q.pcow +1M >/dev/null; then
    ok "qcow2 named q.pcow: create, info, resize"
else
    fail "qcow2 named q.pcow: create, info or resize failed"
fi
if "$QEMU_IMG" create -q -f raw r.raw 1M &&
   "$QEMU_IMG" info -f raw r.raw | grep -q '^virtual size: 1 MiB' &&
   "$QEMU_IMG" convert -O qcow2 r.raw r.qcow2 &&
   "$QEMU_IMG" create -q -f qcow2 -b r.raw -F raw o.qcow2; then
    ok "raw file: create, info, convert, as a backing file"
else
    fail "raw file: create, info, convert or backing failed"
fi
# The magic elsewhere than a header slot is data, not a pcow image.
if printf 'xxxxPCOW' > d.raw && "$QEMU_IMG" info -f raw d.raw >/dev/null; then
    ok "raw file with PCOW at offset 4: opens"
else
    fail "raw file with PCOW at offset 4 refused"
fi

echo "$((count - fails))/$count passed"
[ "$fails" -eq 0 ]
