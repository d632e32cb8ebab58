#!/bin/bash
# What images and bases may be: a block device as a raw base (its real
# size, not st_size 0), never a FIFO, directory, socket or character device
# (refused at once, with one line: a FIFO used to hang open(2) forever), and
# never a loop (an image that is its own base, convert into itself).
# Every command runs under `timeout`, so a hang fails the test.
. "$(dirname "$0")/common.sh"

TMO="timeout 20"

# sum FILE...: content checksums, to prove a refused command changed nothing
sums() {
    md5sum "$@"
}

# ---------------------------------------------------------- block devices
LOOP=
if [ "$(id -u)" -eq 0 ] && command -v losetup >/dev/null; then
    truncate -s 4M dev.raw
    put_random dev.raw 0 4M
    cp dev.raw orig.raw
    LOOP=$(losetup -f --show dev.raw 2>"$T/.losetup") || LOOP=
fi
if [ -n "$LOOP" ]; then
    CLEANUP_CMDS+=("losetup -d $LOOP")
    ok "loop device $LOOP over a 4 MiB file of random data"

    expect 0 $TMO "$IMG" create -q -b "$LOOP" -F raw ov.pcow
    expect 0 $TMO "$IMG" compare ov.pcow orig.raw
    expect 0 $TMO "$IMG" compare ov.pcow "$LOOP"
    ok "the overlay reads the device's data (not zeros)"

    expect 0 $TMO "$IMG" info --output=json ov.pcow
    equal "$(json_get "$OUT" 'd["virtual-size"]')" 4194304 \
        "size taken from the device"
    expect 0 $TMO "$IMG" info --backing-chain --output=json ov.pcow
    equal "$(json_get "$OUT" 'd[1]["virtual-size"]')" 4194304 \
        "info shows the device's size"
    ok "create -b DEVICE takes the device's size; info shows it"

    # A unit inside a cluster (COW of the rest from the device), a whole
    # cluster, and a unit in the last cluster.
    cp orig.raw want.raw
    "$HELPER" write ov.pcow $((1048576 + 8192)) 4K 0xab
    put_byte want.raw $((1048576 + 8192)) 4096 0xab
    "$HELPER" write ov.pcow 2M 64K 0xcd
    put_byte want.raw 2097152 65536 0xcd
    "$HELPER" write ov.pcow $((4194304 - 4096)) 4K 0xef
    put_byte want.raw $((4194304 - 4096)) 4096 0xef
    expect 0 $TMO "$IMG" compare ov.pcow want.raw
    cmp -s "$LOOP" orig.raw || fail "writing the overlay changed the device"
    ok "writes COW from the device; the device is untouched"

    expect 0 $TMO "$IMG" commit ov.pcow
    cmp "$LOOP" want.raw || fail "commit: device content is wrong"
    expect 0 $TMO "$IMG" compare ov.pcow want.raw
    expect 0 $TMO "$IMG" check ov.pcow
    ok "commit writes exactly the overlay's data into the device"

    expect 0 $TMO "$IMG" create -q -b "$LOOP" big.pcow 8M
    expect 0 $TMO "$IMG" convert -O raw big.pcow big.raw
    cmp -n 4194304 big.raw want.raw || fail "probed device base content"
    [ "$(cmp -n 4194304 -i 4194304 big.raw /dev/zero 2>&1)" = "" ] ||
        fail "past the device's end is not zeros"
    expect 0 $TMO "$IMG" create -q plain.pcow 4M
    expect 0 $TMO "$IMG" rebase -u -b "$LOOP" -F raw plain.pcow
    expect 0 $TMO "$IMG" compare plain.pcow want.raw
    ok "probed -b DEVICE, a larger overlay, rebase -u onto a device"

    # A pcow image is a regular file: it grows and gets holes punched.
    before=$(md5sum <"$LOOP")
    for cmd in "info" "check" "snapshot -l" "map" "snapshot -c s" \
               "resize" "commit"; do
        if [ "$cmd" = resize ]; then
            expect_error $TMO "$IMG" resize -f pcow "$LOOP" 8M
        else
            # shellcheck disable=SC2086
            expect_error $TMO "$IMG" $cmd "$LOOP"
        fi
        contains "$ERR" "a block device, not a regular file" "$cmd DEVICE"
    done
    expect_error $TMO "$IMG" create -q -b "$LOOP" -F pcow pov.pcow 4M
    contains "$ERR" "a block device, not a regular file" "-F pcow, device"
    [ ! -e pov.pcow ] || fail "create left pov.pcow"
    equal "$(md5sum <"$LOOP")" "$before" "device unchanged"
    ok "a pcow image on a block device is refused with one line"
elif [ "${CI:-}" = true ]; then
    fail "no loop device (CI needs root and losetup for the block device part)"
else
    echo "SKIP (block device part): needs root and a loop device" \
         "$(cat "$T/.losetup" 2>/dev/null)"
fi

# ------------------------------------------------------------- file kinds
mkfifo fifo
mkdir dir
python3 -c 'import socket, sys
socket.socket(socket.AF_UNIX).bind(sys.argv[1])' sock
expect 0 "$IMG" create -q a.pcow 1M
"$HELPER" write a.pcow 0 64K 0x5a
expect 0 "$IMG" create -q -b a.pcow -F pcow top.pcow
"$HELPER" write top.pcow 128K 4K 0x6b
SUMS=$(sums a.pcow top.pcow)
ok "images, a FIFO, a directory and a socket set up"

for k in fifo dir sock /dev/zero /dev/null; do
    case $k in
    fifo) what="a FIFO" ;;
    dir) what="a directory" ;;
    sock) what="a socket" ;;
    *) what="a character device" ;;
    esac
    # As an image
    for cmd in info check "snapshot -l" "snapshot -c s" map commit \
               "rebase -u -b a.pcow"; do
        # shellcheck disable=SC2086
        expect_error $TMO "$IMG" $cmd "$k"
        contains "$ERR" "$what, not a regular file" "$cmd $k"
    done
    expect_error $TMO "$IMG" resize -f raw "$k" 2M
    contains "$ERR" "$what, not a regular file or block device" "resize $k"
    expect_error $TMO "$IMG" convert "$k" out.pcow
    contains "$ERR" "$what" "convert from $k"
    [ ! -e out.pcow ] || fail "convert from $k left out.pcow"
    expect_error $TMO "$IMG" convert -n top.pcow "$k"
    contains "$ERR" "$what" "convert -n into $k"
    expect_error $TMO "$IMG" convert -n -O raw top.pcow "$k"
    expect 2 $TMO "$IMG" compare top.pcow "$k"
    expect_one_line_error "compare top.pcow $k"
    contains "$ERR" "$what" "compare with $k"
    expect 2 $TMO "$IMG" compare "$k" top.pcow
    expect_one_line_error "compare $k top.pcow"
    # As a base
    for f in "" "-F raw" "-F pcow"; do
        # shellcheck disable=SC2086
        expect_error $TMO "$IMG" create -q -b "$k" $f new.pcow 1M
        contains "$ERR" "$what, not a regular file" "create -b $k $f"
        [ ! -e new.pcow ] || fail "create -b $k $f left new.pcow"
        # shellcheck disable=SC2086
        expect_error $TMO "$IMG" rebase -b "$k" $f top.pcow
        contains "$ERR" "$what, not a regular file" "rebase -b $k $f"
        # shellcheck disable=SC2086
        expect_error $TMO "$IMG" rebase -u -b "$k" $f top.pcow
        contains "$ERR" "$what, not a regular file" "rebase -u -b $k $f"
    done
    expect_error $TMO "$IMG" create -q -b "$k" new.pcow
    [ ! -e new.pcow ] || fail "create -b $k left new.pcow"
    equal "$(sums a.pcow top.pcow)" "$SUMS" "images unchanged after $k"
    ok "$k ($what): refused at once as image and as base, nothing changed"
done
expect 0 "$IMG" info --output=json top.pcow
equal "$(json_get "$OUT" 'd["backing-filename"]')" "a.pcow" \
    "top.pcow keeps its base"

# A base that became a FIFO after the overlay was made
truncate -s 1M rbase.raw
expect 0 "$IMG" create -q -b rbase.raw -F raw rtop.pcow
"$HELPER" write rtop.pcow 0 4K 0x11
rm rbase.raw
mkfifo rbase.raw
RSUM=$(sums rtop.pcow)
for cmd in "info --backing-chain" "map" "commit" "commit -d" \
           "convert -O raw" "compare a.pcow"; do
    case $cmd in
    convert*) # shellcheck disable=SC2086
              expect_error $TMO "$IMG" $cmd rtop.pcow out.raw ;;
    compare*) expect 2 $TMO "$IMG" compare rtop.pcow a.pcow
              expect_one_line_error "compare" ;;
    *)        # shellcheck disable=SC2086
              expect_error $TMO "$IMG" $cmd rtop.pcow ;;
    esac
    contains "$ERR" "a FIFO, not a regular file or block device" \
        "$cmd over a FIFO base"
done
[ ! -e out.raw ] || fail "convert left out.raw"
equal "$(sums rtop.pcow)" "$RSUM" "rtop.pcow unchanged"
expect 0 $TMO "$IMG" check rtop.pcow
expect 0 $TMO "$IMG" rebase -u -b '' rtop.pcow
"$HELPER" verify rtop.pcow 0 4K 0x11
ok "an overlay whose base is now a FIFO: every command fails at once"

# ------------------------------------------------------- same file, loops
expect 0 "$IMG" create -q b.pcow 1M
"$HELPER" write b.pcow 0 4K 0x22
SUMS=$(sums a.pcow b.pcow top.pcow)
expect_error $TMO "$IMG" convert -n a.pcow a.pcow
contains "$ERR" "source and target are the same file" "convert -n a a"
not_contains "$ERR" "in use" "convert -n a a"
expect_error $TMO "$IMG" convert -n -f raw -O raw a.pcow ./a.pcow
contains "$ERR" "source and target are the same file" "convert -n raw"
ln a.pcow hard.pcow
expect_error $TMO "$IMG" convert -n a.pcow hard.pcow
contains "$ERR" "source and target are the same file" "hard link"
rm hard.pcow
expect_error $TMO "$IMG" convert -n top.pcow a.pcow
contains "$ERR" "target is a backing file of the source" "convert -n top a"
not_contains "$ERR" "in use" "convert -n into the base"
ok "convert -n into itself or into its own base: refused, not 'in use'"

expect_error $TMO "$IMG" rebase -u -b a.pcow a.pcow
contains "$ERR" "backing chain loop: './a.pcow' is the image itself" \
    "rebase -u self"
expect_error $TMO "$IMG" rebase -b a.pcow a.pcow
contains "$ERR" "is the image itself" "rebase self"
not_contains "$ERR" "in use" "rebase self"
expect_error $TMO "$IMG" rebase -u -b top.pcow a.pcow
contains "$ERR" "'./a.pcow', the base of './top.pcow', is the image itself" \
    "rebase -u two-image loop"
expect_error $TMO "$IMG" rebase -b top.pcow a.pcow
contains "$ERR" "is the image itself" "rebase two-image loop"
not_contains "$ERR" "in use" "rebase two-image loop"
expect 0 "$IMG" info --output=json a.pcow
equal "$(json_get "$OUT" '"backing-filename" in d')" "False" \
    "a.pcow still has no base"
equal "$(sums a.pcow b.pcow top.pcow)" "$SUMS" "nothing changed"
ok "rebase (-u or not) refuses a self-loop and a longer loop"

# Loops made behind the tools' back (renames): an image that is its own
# base, and a -> c -> a.
expect 0 "$IMG" create -q -b b.pcow -F pcow self.pcow
"$HELPER" write self.pcow 64K 4K 0x33
expect 0 "$IMG" create -q -b self.pcow -F pcow x.pcow
mv x.pcow self.pcow
"$HELPER" write b.pcow 0 4K 0x22
for cmd in commit "commit -d"; do
    # shellcheck disable=SC2086
    expect_error $TMO "$IMG" $cmd self.pcow
    contains "$ERR" "backing chain loop: './self.pcow'" "$cmd self-base"
    contains "$ERR" "is the image itself" "$cmd self-base"
    not_contains "$ERR" "in use" "$cmd self-base"
    not_contains "$ERR" "QMP" "$cmd self-base"
done
expect_error $TMO "$IMG" convert -n self.pcow self.pcow
contains "$ERR" "loop" "convert -n self-base"
not_contains "$ERR" "in use" "convert -n self-base"
expect 0 $TMO "$IMG" rebase -u -b '' self.pcow
expect 0 $TMO "$IMG" check self.pcow
ok "commit of an image that is its own base: 'loop', not 'in use ... QMP'"

expect 0 "$IMG" create -q p.pcow 1M
expect 0 "$IMG" create -q -b p.pcow -F pcow q.pcow
expect 0 "$IMG" create -q -b q.pcow -F pcow x.pcow
mv x.pcow p.pcow
expect_error $TMO "$IMG" commit p.pcow
contains "$ERR" "'./p.pcow', the base of './q.pcow', is the image itself" \
    "commit in a two-image loop"
expect_error $TMO "$IMG" commit q.pcow
contains "$ERR" "loop" "commit q"
not_contains "$ERR" "in use" "commit q"
ok "commit in a two-image loop names the loop"

# Creating y over x, whose base is the missing name y, would close a loop.
expect 0 "$IMG" create -q y.pcow 1M
expect 0 "$IMG" create -q -b y.pcow -F pcow xx.pcow
rm y.pcow
expect_error $TMO "$IMG" create -q -b xx.pcow -F pcow y.pcow 1M
contains "$ERR" "backing chain loop" "create closing a loop"
[ ! -e y.pcow ] || fail "create left y.pcow"
ok "create refuses to close a loop and leaves no file"


# A pcow image is never written as raw: resize -f raw used to truncate it
# and convert -n -O raw to overwrite its header, both with exit 0.
expect 0 "$IMG" create -q keep.pcow 4M
"$HELPER" write keep.pcow 0 64K 0x5c
truncate -s 64K small.raw
before=$(sums keep.pcow)
expect_error $TMO "$IMG" resize --shrink -f raw keep.pcow 64K
contains "$ERR" "is a pcow image" "resize -f raw of a pcow image"
expect_error $TMO "$IMG" resize -f raw keep.pcow 8M
contains "$ERR" "is a pcow image" "resize -f raw (grow) of a pcow image"
expect_error $TMO "$IMG" convert -n -O raw small.raw keep.pcow
contains "$ERR" "is a pcow image" "convert -n -O raw into a pcow image"
equal "$(sums keep.pcow)" "$before" "the refused pcow image is unchanged"
"$HELPER" verify keep.pcow 0 64K 0x5c
expect 0 "$IMG" check keep.pcow
ok "a pcow image is never resized or overwritten as raw"

finish
