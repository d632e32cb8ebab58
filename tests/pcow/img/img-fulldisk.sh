#!/bin/bash
# A full file system: create and convert fail with one clear line, leave no
# half-written file, and an image already there still checks clean.
. "$(dirname "$0")/common.sh"

if [ "$(id -u)" -ne 0 ]; then
    echo "SKIP: needs root to mount a tmpfs"
    exit 77
fi
mkdir -p mnt
if ! mount -t tmpfs -o size=2M tmpfs mnt; then
    echo "SKIP: cannot mount a tmpfs"
    exit 77
fi
CLEANUP_CMDS+=("umount $T/mnt")
ok "2 MiB tmpfs mounted"

expect 0 "$IMG" create -q mnt/keep.pcow 1G
"$HELPER" write mnt/keep.pcow 0 256K 0x11
expect 0 "$IMG" check mnt/keep.pcow
ok "small image on the tmpfs"

truncate -s 64M src.raw
put_random src.raw 0 8M
expect_error "$IMG" convert -O pcow src.raw mnt/big.pcow
contains "$ERR" "mnt/big.pcow" "names the target"
contains "$ERR" "No space left on device" "says the disk is full"
[ ! -e mnt/big.pcow ] || fail "convert left mnt/big.pcow"
ok "convert to pcow on a full disk: clear error, no file left"

expect_error "$IMG" convert -O raw src.raw mnt/big.raw
contains "$ERR" "No space left on device" "raw output"
[ ! -e mnt/big.raw ] || fail "convert left mnt/big.raw"
ok "convert to raw on a full disk: clear error, no file left"

expect 0 "$IMG" check mnt/keep.pcow
"$HELPER" verify mnt/keep.pcow 0 256K 0x11
ok "the existing image still checks clean"

# Writes into the existing image until the disk is full.
expect 1 "$HELPER" write mnt/keep.pcow 1M 8M 0x22
contains "$ERR" "No space left on device" "helper write"
expect 0 "$IMG" check mnt/keep.pcow
"$HELPER" verify mnt/keep.pcow 0 256K 0x11
expect 1 "$IMG" convert -n -O pcow src.raw mnt/keep.pcow
expect_one_line_error "convert -n"
contains "$ERR" "No space left on device" "convert -n"
run "$IMG" check mnt/keep.pcow
[ "$RC" -eq 0 ] || [ "$RC" -eq 3 ] || fail "check after ENOSPC: $RC"
ok "ENOSPC while writing an image: clear error, image consistent"

# Fill the disk completely: even create fails cleanly.
dd if=/dev/zero of=mnt/fill bs=64K status=none 2>/dev/null || true
expect_error "$IMG" create mnt/new.pcow 1G
contains "$ERR" "mnt/new.pcow" "create names the file"
[ ! -e mnt/new.pcow ] || fail "create left mnt/new.pcow"
expect_error "$IMG" snapshot -c s mnt/keep.pcow
run "$IMG" check mnt/keep.pcow
[ "$RC" -eq 0 ] || [ "$RC" -eq 3 ] || fail "check after full: $RC"
ok "create and snapshot on a full disk fail cleanly"

# An empty image on a completely full file system: its tables are holes
# in the file, and a mapping that touches them must not die of SIGBUS.
rm -f mnt/fill mnt/keep.pcow
expect 0 "$IMG" create -q mnt/empty.pcow 1G
dd if=/dev/zero of=mnt/fill bs=4K status=none 2>/dev/null || true
expect 0 "$IMG" info mnt/empty.pcow
run "$IMG" snapshot -c s mnt/empty.pcow
[ "$RC" -le 1 ] || fail "snapshot -c on a full disk died (exit $RC): $ERR"
[ "$RC" -eq 0 ] || expect_one_line_error "snapshot -c on a full disk"
run "$HELPER" write mnt/empty.pcow 0 4K 0x01
[ "$RC" -le 1 ] || fail "a write on a full disk died (exit $RC): $ERR"
run "$IMG" check mnt/empty.pcow
[ "$RC" -eq 0 ] || [ "$RC" -eq 3 ] || fail "check after full: $RC"
ok "empty image on a full disk: clean errors, no crash"

finish
