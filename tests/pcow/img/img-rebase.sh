#!/bin/bash
# rebase: safe mode keeps the guest-visible content, -u only rewrites the
# reference, -b '' removes the base.
. "$(dirname "$0")/common.sh"

expect 0 "$IMG" create -q old.pcow 8M
"$HELPER" write old.pcow 0 2M 0x01
"$HELPER" write old.pcow 4M 64K 0x04
expect 0 "$IMG" create -q new.pcow 8M
"$HELPER" write new.pcow 0 1M 0x01          # same as old in MiB 0
"$HELPER" write new.pcow 1M 1M 0x02         # differs in MiB 1
"$HELPER" write new.pcow 6M 64K 0x06        # old has zeros here
expect 0 "$IMG" create -q -b old.pcow -F pcow top.pcow
"$HELPER" write top.pcow 1M 4K 0x0f         # top's own data
cp --sparse=always top.pcow top-u.pcow
cp --sparse=always top.pcow top-none.pcow
expect 0 "$IMG" convert -O raw top.pcow before.raw
ok "old base, new base and overlay set up"

expect 0 "$IMG" rebase -b new.pcow -F pcow top.pcow
expect 0 "$IMG" info --output=json top.pcow
equal "$(json_get "$OUT" 'd["backing-filename"]')" new.pcow "new base"
expect 0 "$IMG" compare before.raw top.pcow
"$HELPER" verify top.pcow 1M 4K 0x0f
"$HELPER" verify top.pcow $((1048576 + 4096)) $((1048576 - 4096)) 0x01
"$HELPER" verify top.pcow 4M 64K 0x04
"$HELPER" verify top.pcow 6M 64K 0
expect 0 "$IMG" check top.pcow
ok "safe rebase keeps the content byte for byte"

# Only the differing ranges were copied: MiB 0 still comes from the base.
expect 0 "$IMG" map --output=json top.pcow
equal "$(depth_at "$OUT" 0)" 1 "MiB 0 read from the new base"
ok "safe rebase copies only what differs"

expect 0 "$IMG" rebase -u -b new.pcow top-u.pcow
expect 0 "$IMG" info --output=json top-u.pcow
equal "$(json_get "$OUT" 'd["backing-filename"]')" new.pcow "-u base"
equal "$(json_get "$OUT" 'd["backing-filename-format"]')" pcow "-u fmt"
"$HELPER" verify top-u.pcow 1M 4K 0x0f
"$HELPER" verify top-u.pcow $((1048576 + 4096)) 4K 0x02
"$HELPER" verify top-u.pcow 4M 64K 0
"$HELPER" verify top-u.pcow 6M 64K 0x06
ok "rebase -u only rewrites the reference (content now the new base's)"

expect 0 "$IMG" rebase -b '' top-none.pcow
expect 0 "$IMG" info --output=json top-none.pcow
equal "$(json_get "$OUT" '"backing-filename" in d')" False "no base"
expect 0 "$IMG" compare before.raw top-none.pcow
expect 0 "$IMG" check top-none.pcow
ok "rebase -b '' flattens the image"

# -u onto a base that does not exist: allowed with -F; safe mode refuses.
cp --sparse=always old.pcow old2.pcow
expect 0 "$IMG" create -q -b old2.pcow -F pcow t2.pcow
expect_error "$IMG" rebase -b missing.pcow t2.pcow
contains "$ERR" "missing.pcow" "names the missing base"
expect_error "$IMG" rebase -u -b missing.pcow t2.pcow
expect 0 "$IMG" rebase -u -b missing.pcow -F pcow t2.pcow
expect_error "$IMG" info --backing-chain t2.pcow
expect 0 "$IMG" info t2.pcow
contains "$OUT" "backing file: missing.pcow" "info without the base"
expect 0 "$IMG" rebase -u -b old2.pcow -F pcow t2.pcow
expect 0 "$IMG" compare old2.pcow t2.pcow
ok "rebase -u to a missing base and back"

# A raw new base.
expect 0 "$IMG" convert -O raw new.pcow new.raw
expect 0 "$IMG" rebase -b new.raw -F raw top.pcow
expect 0 "$IMG" compare before.raw top.pcow
expect 0 "$IMG" info --output=json top.pcow
equal "$(json_get "$OUT" 'd["backing-filename-format"]')" raw "raw base"
ok "safe rebase onto a raw base"

# Snapshots would read through the new base: safe rebase refuses.
expect 0 "$IMG" create -q -b old.pcow -F pcow snap.pcow
expect 0 "$IMG" snapshot -c s snap.pcow
expect_error "$IMG" rebase -b new.pcow snap.pcow
contains "$ERR" "snapshot" "names the snapshots"
expect 0 "$IMG" info --output=json snap.pcow
equal "$(json_get "$OUT" 'd["backing-filename"]')" old.pcow "untouched"
ok "safe rebase of an image with snapshots is refused"

expect_error "$IMG" rebase top.pcow
expect_error "$IMG" rebase -b new.pcow -F qcow2 top.pcow
ok "rebase argument errors"

finish
