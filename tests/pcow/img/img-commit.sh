#!/bin/bash
# commit: the overlay's own data goes into its base; the overlay is emptied
# (or kept with -d).
. "$(dirname "$0")/common.sh"

expect 0 "$IMG" create -q base.pcow 8M
"$HELPER" write base.pcow 0 2M 0x01
expect 0 "$IMG" create -q -b base.pcow -F pcow top.pcow
"$HELPER" write top.pcow 1M 64K 0x02
"$HELPER" write top.pcow 3M 4K 0x03
"$HELPER" write top.pcow $((512 * 1024 + 4096)) 4K 0x09   # inside base data
"$HELPER" write top.pcow $((8 * 1048576 - 4096)) 4K 0x04
expect 0 "$IMG" convert -O raw top.pcow want.raw
ok "base and overlay set up"

expect 0 "$IMG" commit top.pcow
contains "$OUT" "Image committed." "commit output"
expect 0 "$IMG" compare want.raw base.pcow
expect 0 "$IMG" compare want.raw top.pcow
"$HELPER" verify base.pcow 1M 64K 0x02
"$HELPER" verify base.pcow 3M 4K 0x03
"$HELPER" verify base.pcow 0 512K 0x01
"$HELPER" verify base.pcow 512K 4K 0x01
"$HELPER" verify base.pcow $((512 * 1024 + 4096)) 4K 0x09
"$HELPER" verify base.pcow $((512 * 1024 + 8192)) 4K 0x01
"$HELPER" verify top.pcow 512K 4K 0x01
"$HELPER" verify top.pcow $((512 * 1024 + 4096)) 4K 0x09
"$HELPER" verify top.pcow $((512 * 1024 + 8192)) 4K 0x01
ok "commit: the base holds the overlay's data (also partial clusters)"

expect 0 "$IMG" map --output=json top.pcow
equal "$(own_data_extents "$OUT")" 0 "overlay has no data of its own"
expect 0 "$IMG" check top.pcow
expect 0 "$IMG" check base.pcow
ok "commit empties the overlay; both check clean"

# -d keeps the overlay's data.
"$HELPER" write top.pcow 5M 64K 0x05
expect 0 "$IMG" commit -d top.pcow
"$HELPER" verify base.pcow 5M 64K 0x05
expect 0 "$IMG" map --output=json top.pcow
equal "$(own_data_extents "$OUT")" 1 "overlay keeps its data with -d"
ok "commit -d keeps the overlay"

# A raw base.
truncate -s 4M base.raw
expect 0 "$IMG" create -q -b base.raw -F raw rtop.pcow
"$HELPER" write rtop.pcow 64K 8K 0x0a
expect 0 "$IMG" commit rtop.pcow
expect 0 "$IMG" compare base.raw rtop.pcow
od -A d -t x1 -j 65536 -N 1 base.raw | grep -q " 0a" || \
    fail "raw base not written"
ok "commit into a raw base"

# A larger overlay grows its base.
expect 0 "$IMG" create -q small.pcow 1M
expect 0 "$IMG" create -q -b small.pcow -F pcow large.pcow 2M
"$HELPER" write large.pcow 1536K 4K 0x0b
expect 0 "$IMG" commit large.pcow
expect 0 "$IMG" info --output=json small.pcow
equal "$(json_get "$OUT" 'd["virtual-size"]')" 2097152 "base grown"
"$HELPER" verify small.pcow 1536K 4K 0x0b
ok "commit grows a smaller base"

# Errors: no base; base in use by another writer.
expect_error "$IMG" commit base.raw
expect_error "$IMG" commit small.pcow
contains "$ERR" "no backing file" "commit without base"
"$HELPER" write top.pcow 6M 4K 0x06
hold_image base.pcow
expect_error "$IMG" commit top.pcow
release_image
"$HELPER" verify top.pcow 6M 4K 0x06
"$HELPER" verify base.pcow 6M 4K 0
ok "commit errors leave both images untouched"


# An overlay whose header generation is at its maximum cannot clear its
# backing limit after the commit: commit used to write the base first and
# fail only then, a failed command that had changed the base.
expect 0 "$IMG" create -q gb.pcow 4M
"$HELPER" write gb.pcow 0 4M 0x31
expect 0 "$IMG" create -q -b gb.pcow -F pcow go.pcow 2M
"$HELPER" write go.pcow 0 64K 0x32
expect 0 "$IMG" resize go.pcow 4M
hdr go.pcow set generation 18446744073709551615 >/dev/null
before=$(md5sum gb.pcow go.pcow)
expect_error "$IMG" commit go.pcow
contains "$ERR" "generation is at its maximum" "commit at the last generation"
equal "$(md5sum gb.pcow go.pcow)" "$before" "refused commit: both files"
"$HELPER" verify gb.pcow 0 4M 0x31
ok "commit that cannot clear the backing limit changes nothing"

finish
