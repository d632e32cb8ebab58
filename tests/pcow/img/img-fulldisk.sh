#!/bin/bash
# A full file system: create and convert fail with one clear line, leave no
# half-written file, and an image already there still checks clean; table
# pages that are holes in the file never make a command die of SIGBUS
# (tmpfs and ext4).  Every "full disk" step first asserts from statfs that
# the file system really is full, and what must need a block there must
# fail with ENOSPC's message: the test cannot pass by never reaching a
# full disk.
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

CLUSTER=65536       # the default cluster size: a new cluster needs this

# fs_free DIR: bytes the file system of DIR still has available (ext4
# keeps back reserved clusters that f_bfree counts; the loop fs has -m 0)
fs_free() {
    stat -f -c '%a %S' "$1" | awk '{ print $1 * $2 }'
}

# assert_full DIR WHAT [LIMIT]: the file system of DIR has less than LIMIT
# bytes (default: one 4 KiB page, so not even a header) available, so what
# follows really runs on a full disk
assert_full() {
    local free
    free=$(fs_free "$1")
    [ "$free" -lt "${3:-4096}" ] ||
        fail "$2: the file system is not full ($free bytes free)"
    echo "    ($2: $free bytes free)"
}

# must_enospc WHAT: the last run exited 1 with one ENOSPC line (on a full
# disk, where it needed a block)
must_enospc() {
    [ "$RC" -eq 1 ] || fail "$1: exit $RC, expected 1 (ENOSPC): $ERR"
    clean_enospc "$1"
}

# clean_enospc WHAT: the last run exited 0, or 1 with one ENOSPC line
clean_enospc() {
    [ "$RC" -le 1 ] || fail "$1 died (exit $RC): $ERR"
    if [ "$RC" -eq 1 ]; then
        [ "$(printf '%s\n' "$ERR" | grep -c .)" -eq 1 ] ||
            fail "$1: more than one error line: $ERR"
        contains "$ERR" "No space left on device" "$1"
    fi
}

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
assert_full mnt "after the helper's write" "$CLUSTER"
expect 0 "$IMG" check mnt/keep.pcow
"$HELPER" verify mnt/keep.pcow 0 256K 0x11
expect 1 "$IMG" convert -n -O pcow src.raw mnt/keep.pcow
expect_one_line_error "convert -n"
contains "$ERR" "No space left on device" "convert -n"
run "$IMG" check mnt/keep.pcow
[ "$RC" -eq 0 ] || [ "$RC" -eq 3 ] || fail "check after ENOSPC: $RC"
ok "ENOSPC while writing an image: clear error, image consistent"

# Fill the disk completely: even create fails cleanly.
dd if=/dev/zero of=mnt/fill bs=4K status=none 2>/dev/null || true
assert_full mnt "filled"
expect_error "$IMG" create mnt/new.pcow 1G
contains "$ERR" "mnt/new.pcow" "create names the file"
contains "$ERR" "No space left on device" "create on a full disk"
[ ! -e mnt/new.pcow ] || fail "create left mnt/new.pcow"
expect_error "$IMG" snapshot -c s mnt/keep.pcow
contains "$ERR" "No space left on device" "snapshot -c on a full disk"
run "$IMG" check mnt/keep.pcow
[ "$RC" -eq 0 ] || [ "$RC" -eq 3 ] || fail "check after full: $RC"
ok "create and snapshot on a full disk fail cleanly"

# An empty image on a completely full file system: its tables are holes
# in the file, and a mapping that touches them must not die of SIGBUS.
rm -f mnt/fill mnt/keep.pcow
expect 0 "$IMG" create -q mnt/empty.pcow 1G
dd if=/dev/zero of=mnt/fill bs=4K status=none 2>/dev/null || true
assert_full mnt "empty image, disk filled"
expect 0 "$IMG" info mnt/empty.pcow
run "$IMG" snapshot -c s mnt/empty.pcow
[ "$RC" -le 1 ] || fail "snapshot -c on a full disk died (exit $RC): $ERR"
# Nothing is free: the L1 table copy (or the holes under it) cannot be had
equal "$RC" 1 "snapshot -c on a full disk"
expect_one_line_error "snapshot -c on a full disk"
contains "$ERR" "No space left on device" "snapshot -c on a full disk"
run "$HELPER" write mnt/empty.pcow 0 4K 0x01
[ "$RC" -le 1 ] || fail "a write on a full disk died (exit $RC): $ERR"
must_enospc "a write to an empty image on a full disk"
run "$IMG" check mnt/empty.pcow
[ "$RC" -eq 0 ] || [ "$RC" -eq 3 ] || fail "check after full: $RC"
ok "empty image on a full disk: clean errors, no crash"

# --- Metadata pages that are holes in the file ---------------------------
# A sparse copy (cp --sparse=always, rsync -S, fallocate -d) leaves the
# empty pages of an L2 table as holes.  Tables are written through shared
# mappings, and a store (tmpfs: even a load) on a hole page of a full file
# system needs a block it cannot get: SIGBUS, unless open allocated them.

# sparse_image DIR: h.pcow with data at 0 and an L2 table (the cluster
# at 128 KiB) whose pages after the first, all zeros, are holes.  Punched
# explicitly: fallocate -d -o/-l of util-linux 2.38 punches past its range.
sparse_image() {
    rm -f "$1/h.pcow" "$1/fill" "$1/spacer"
    expect 0 "$IMG" create -q "$1/h.pcow" 64M
    "$HELPER" write "$1/h.pcow" 0 64K 0x11
    equal "$(hdr "$1/h.pcow" l2entry 0)" 131072 "L2 table at 128 KiB"
    equal "$(od -An -tx1 -j 135168 -N 61440 "$1/h.pcow" | tr -d ' 0\n*')" \
        "" "L2 pages after the first are zeros"
    fallocate -p -o 135168 -l 61440 "$1/h.pcow"
    sync
}

# fill_fs DIR [BYTES]: fill the file system, then free BYTES again
fill_fs() {
    [ -z "${2:-}" ] || head -c "$2" /dev/zero >"$1/spacer"
    sync
    dd if=/dev/zero of="$1/fill" bs=4K status=none 2>/dev/null || true
    # ext4 can give back a block it held in reserve once the data is on
    # disk (seen: 4096 bytes free after the sync): fill that too
    for _ in 1 2 3; do
        sync
        [ "$(fs_free "$1")" -ge 4096 ] || break
        dd if=/dev/zero of="$1/fill" bs=4K oflag=append conv=notrunc \
            status=none 2>/dev/null || true
    done
    rm -f "$1/spacer"
    sync
}

full_fs_tables() {      # DIR FSNAME
    local d=$1 c
    sparse_image "$d"
    fill_fs "$d"
    assert_full "$d" "$2: filled"
    for c in "snapshot -c s" "resize" "check -r leaks"; do
        if [ "$c" = resize ]; then
            run "$IMG" resize "$d/h.pcow" 128M
        else
            run "$IMG" $c "$d/h.pcow"
        fi
        # open gives the hole pages their blocks: none are left
        must_enospc "$2: $c on a full disk"
    done
    run "$HELPER" write "$d/h.pcow" 8M 4K 0x13
    must_enospc "$2: a write on a full disk"
    rm -f "$d/fill"
    expect 0 "$IMG" check "$d/h.pcow"
    "$HELPER" verify "$d/h.pcow" 0 64K 0x11
    ok "$2: sparse L2 table on a full disk: ENOSPC, never SIGBUS"

    # Room for exactly one cluster: a write takes it for its data, and the
    # store into the L2 table's hole page then has nothing left.
    sparse_image "$d"
    fill_fs "$d" "$CLUSTER"
    c=$(fs_free "$d")
    [ "$c" -ge "$CLUSTER" ] && [ "$c" -lt $((2 * CLUSTER)) ] ||
        fail "$2: $c bytes free, expected one cluster"
    run "$HELPER" write "$d/h.pcow" 8M 4K 0x13
    clean_enospc "$2: a write into the last free cluster"
    rm -f "$d/fill"
    expect 0 "$IMG" check "$d/h.pcow"
    "$HELPER" verify "$d/h.pcow" 0 64K 0x11
    expect 0 "$IMG" snapshot -c s "$d/h.pcow"
    "$HELPER" write "$d/h.pcow" 8M 4K 0x13
    "$HELPER" verify "$d/h.pcow" 8M 4K 0x13
    expect 0 "$IMG" check "$d/h.pcow"
    ok "$2: one free cluster left: ENOSPC or success, image intact"
}

rm -f mnt/*
full_fs_tables mnt tmpfs

# The same on ext4, in a small loop-mounted file system.
if command -v mkfs.ext4 >/dev/null &&
    truncate -s 16M ext4.img && mkfs.ext4 -q -F -b 4096 -m 0 ext4.img &&
    mkdir -p ext4 && mount -o loop ext4.img ext4; then
    CLEANUP_CMDS+=("umount $T/ext4")
    full_fs_tables ext4 ext4
elif [ "${CI:-}" = true ]; then
    fail "cannot mount an ext4 loop image (CI needs mkfs.ext4 and loop)"
else
    echo "SKIP: cannot mount an ext4 loop image"
fi

finish
