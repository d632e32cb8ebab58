#!/bin/bash
# Error paths: each gives one "pcow-img: FILE: problem" line, a non-zero
# exit and leaves the image untouched.
. "$(dirname "$0")/common.sh"

# Nonexistent file, every command that opens one.
for cmd in info check map "snapshot -l" "snapshot -c s" commit \
           "rebase -b x.pcow" "resize" "convert -O raw"; do
    case "$cmd" in
    resize) expect_error "$IMG" resize nonexistent.pcow 1G ;;
    convert*) expect_error "$IMG" $cmd nonexistent.pcow out.raw ;;
    *) expect_error "$IMG" $cmd nonexistent.pcow ;;
    esac
    contains "$ERR" "nonexistent.pcow" "$cmd names the file"
done
[ ! -e out.raw ] || fail "convert left out.raw behind"
ok "nonexistent file: one line naming it, exit 1"

# Sizes.
expect_error "$IMG" create a.pcow 0
contains "$ERR" "a.pcow" "size 0 names the file"
expect_error "$IMG" create a.pcow 0G
expect_error "$IMG" create a.pcow 1T1
expect_error "$IMG" create a.pcow -5
expect_error "$IMG" create a.pcow 99999999999999999999999
expect_error "$IMG" create a.pcow 16E
expect_error "$IMG" create a.pcow 4000
expect_error "$IMG" create a.pcow
expect_error "$IMG" create 64 0 a.pcow
[ ! -e a.pcow ] || fail "a failed create left a.pcow behind"
ok "size 0, junk, too big, unaligned, missing: refused, nothing created"

# 4 KiB clusters: at most 2^22 L1 entries * 128 L2 entries * 4 KiB = 2 TiB.
expect_error "$IMG" create -o cluster_size=4K a.pcow 4T
contains "$ERR" "a.pcow" "too big names the file"
expect_error "$IMG" create a.pcow 1024T
[ ! -e a.pcow ] || fail "too-big create left a file"
ok "virtual size beyond the format's limit is refused"

# Cluster size and COW unit.
for cs in 3K 2K 4M 65535 0 abc; do
    expect_error "$IMG" create -o cluster_size=$cs a.pcow 1G
done
expect_error "$IMG" create 3 1 a.pcow
# The legacy form always names the cluster size: 0 is not "the default".
expect_error "$IMG" create 0 1 a.pcow
contains "$ERR" "cluster size 0" "legacy cluster size 0 named"
expect_error "$IMG" create -o cluster_size=64K,cow_unit=2K a.pcow 1G
expect_error "$IMG" create -o cluster_size=64K,cow_unit=128K a.pcow 1G
expect_error "$IMG" create -o cluster_size=2M,cow_unit=4K a.pcow 1G
expect_error "$IMG" create -o no_such_opt=1 a.pcow 1G
expect_error "$IMG" create -f qcow2 a.pcow 1G
[ ! -e a.pcow ] || fail "a failed create left a.pcow behind"
ok "bad cluster size / COW unit / option / format refused"

# Never overwrite.
expect 0 "$IMG" create -q keep.pcow 1G
"$HELPER" write keep.pcow 0 4K 0x42
sum=$(md5sum < keep.pcow)
expect_error "$IMG" create keep.pcow 2G
contains "$ERR" "exists" "existing file"
equal "$(md5sum < keep.pcow)" "$sum" "untouched"
truncate -s 1M src.raw
expect_error "$IMG" convert -O pcow src.raw keep.pcow
equal "$(md5sum < keep.pcow)" "$sum" "untouched by convert"
ok "create/convert never overwrite an existing image"

# Missing base.
expect_error "$IMG" create -b nobase.pcow top.pcow 1G
contains "$ERR" "nobase.pcow" "missing base named"
[ ! -e top.pcow ] || fail "create with a missing base left a file"
expect 0 "$IMG" create -q base.pcow 1G
expect 0 "$IMG" create -q -b base.pcow -F pcow top.pcow
mv base.pcow moved.pcow
expect_error "$IMG" map top.pcow
contains "$ERR" "base.pcow" "missing base at open"
expect_error "$IMG" snapshot -c s top.pcow
expect_error "$IMG" commit top.pcow
expect_error "$IMG" convert top.pcow out.raw
[ ! -e out.raw ] || fail "convert left out.raw"
expect 0 "$IMG" info top.pcow
mv moved.pcow base.pcow
expect 0 "$IMG" check top.pcow
ok "missing base: clear error naming it; info still works"

expect_error "$IMG" create -b base.pcow -F qcow2 t2.pcow
expect_error "$IMG" create -F pcow t2.pcow 1G
expect_error "$IMG" create -f raw -b base.pcow t2.raw 1G
ok "bad backing format / -F without -b / raw with a base"

# Bad magic.
expect 0 "$IMG" create -q bad.pcow 1G
printf 'XXXX' | dd of=bad.pcow conv=notrunc status=none
sum=$(md5sum < bad.pcow)
for cmd in info check map "snapshot -l" "snapshot -c s" commit; do
    expect_error "$IMG" $cmd bad.pcow
    contains "$ERR" "bad.pcow" "$cmd names the file"
done
expect_error "$IMG" resize bad.pcow 2G
contains "$ERR" "not a pcow image" "bad magic message"
equal "$(md5sum < bad.pcow)" "$sum" "untouched"
ok "bad magic: refused by every command, file untouched"

# Header corrupted behind a valid magic (CRC mismatch).
expect 0 "$IMG" create -q crc.pcow 1G
printf '\x07' | dd of=crc.pcow bs=1 seek=60 conv=notrunc status=none
expect_error "$IMG" info crc.pcow
expect_error "$IMG" snapshot -c s crc.pcow
run "$IMG" check crc.pcow
[ "$RC" -eq 1 ] || [ "$RC" -eq 2 ] || fail "check of a corrupt header: $RC"
ok "corrupt header (CRC): refused"

# Truncated files.
expect 0 "$IMG" create -q tr.pcow 1G
"$HELPER" write tr.pcow 0 1M 0x11
cp tr.pcow tr1.pcow
truncate -s 100 tr1.pcow
expect_error "$IMG" info tr1.pcow
expect_error "$IMG" map tr1.pcow
cp tr.pcow tr2.pcow
truncate -s 65536 tr2.pcow
expect_error "$IMG" map tr2.pcow
contains "$ERR" "tr2.pcow" "truncated named"
run "$IMG" check tr2.pcow
[ "$RC" -eq 1 ] || [ "$RC" -eq 2 ] || fail "check of a truncated image: $RC"
truncate -s 0 tr3.pcow
expect_error "$IMG" info tr3.pcow
ok "truncated images: refused with one line"

# A crafted L1 entry pointing far outside the file.
expect 0 "$IMG" create -q cr.pcow 1G
"$HELPER" write cr.pcow 0 64K 0x11
l1=$(od -A n -t u8 -j 64 -N 8 cr.pcow | tr -d ' ')
python3 - "$l1" <<'PY'
import struct, sys
with open("cr.pcow", "r+b") as f:
    f.seek(int(sys.argv[1]))
    f.write(struct.pack("<Q", 0x40000000000))
PY
expect_error "$IMG" map cr.pcow
expect 2 "$IMG" check cr.pcow
contains "$OUT" "errors were found" "check reports the corruption"
ok "crafted out-of-range L1 entry: open refuses, check exits 2"

# Snapshot table and sizes on a raw file make no sense.
truncate -s 1M plain.raw
expect_error "$IMG" snapshot -l plain.raw
expect_error "$IMG" info plain.raw
expect 0 "$IMG" info -f raw plain.raw
ok "raw files are not taken for pcow images"

finish
