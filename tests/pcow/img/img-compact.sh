#!/bin/bash
# compact: clusters written out of guest order end up one extent per guest
# run, content and check unchanged; info counts the VMAs the monitor needs;
# bad input is one line and exit 1.
. "$(dirname "$0")/common.sh"

vmas() {
    json_get "$("$IMG" info --output=json "$1")" \
        'd["format-specific"]["data"]["vmas-needed"]'
}

# Three guest runs (clusters 2-9, 20-22, 30-31), each cluster written by
# its own process in shuffled order: each lands at the file's end.
expect 0 "$IMG" create -q c.pcow 64M
for c in 9 2 5 3 8 4 6 7 20 31 21 30 22; do
    "$HELPER" write c.pcow $((c * 65536)) 64K $((c + 16))
done
expect 0 "$IMG" convert -O raw c.pcow before.raw
before=$(vmas c.pcow)
[ "$before" -gt 7 ] || fail "a shuffled image needs more than 7 VMAs: $before"
expect 0 "$IMG" map --output=json c.pcow
[ "$(own_data_extents "$OUT")" -gt 3 ] || fail "not fragmented: $OUT"
expect 0 "$IMG" info c.pcow
contains "$OUT" "VMAs needed: $before" "info prints the VMA count"
ok "info: $before VMAs needed before compact"

expect 0 "$IMG" compact c.pcow
contains "$OUT" "13 clusters in 3 runs moved" "compact output"
contains "$OUT" "VMAs needed: $before before, 7 now" "compact counts"
equal "$(vmas c.pcow)" 7 "a hole, three runs and the holes between"
expect 0 "$IMG" map --output=json c.pcow
equal "$(own_data_extents "$OUT")" 3 "one data extent per run"
expect 0 "$IMG" check c.pcow
expect 0 "$IMG" compare -s c.pcow before.raw
ok "compact: 3 runs, 7 VMAs, same content, check clean"

expect 0 "$IMG" compact --output=json c.pcow
equal "$(json_get "$OUT" 'd["clusters-moved"]')" 0 "nothing left to move"
equal "$(json_get "$OUT" 'd["vmas-after"]')" 7 "json vmas-after"
expect 0 "$IMG" compact -q c.pcow
equal "$OUT" "" "-q prints nothing"
ok "compact again moves nothing (json, -q)"

# An overlay: the count goes through the base; a missing base: unknown
expect 0 "$IMG" create -q -b c.pcow -F pcow o.pcow
equal "$(vmas o.pcow)" 7 "overlay counts the base's extents"
mv c.pcow moved.pcow
expect 0 "$IMG" info o.pcow
contains "$OUT" "VMAs needed: unknown" "missing base"
expect 0 "$IMG" info --output=json o.pcow
not_contains "$OUT" "vmas-needed" "no count without the chain"
mv moved.pcow c.pcow
ok "info: VMAs through the chain, unknown without it"

# Bad input: one line, exit 1, the file unchanged
expect_error "$IMG" compact missing.pcow
contains "$ERR" "missing.pcow" "names the missing file"
expect_error "$IMG" compact before.raw
contains "$ERR" "not a pcow image" "wrong format"
expect_error "$IMG" compact
expect_error "$IMG" compact --output=xml c.pcow
expect_error "$IMG" compact -x c.pcow
ok "missing file, raw file, no file, bad options: one line, exit 1"

hold_image c.pcow
sum=$(md5sum < c.pcow)
expect_error "$IMG" compact c.pcow
contains "$ERR" "in use" "image in use"
equal "$(md5sum < c.pcow)" "$sum" "untouched while in use"
release_image
ok "an image in use is refused"

# Read-only: a read-only bind mount (root ignores file modes), else 0444
mkdir ro
cp c.pcow ro/r.pcow
if [ "$(id -u)" -eq 0 ]; then
    expect 1 unshare --mount --propagation private -- sh -c \
        'mount --bind ro ro && mount -o remount,bind,ro ro &&
         exec "$0" compact ro/r.pcow' "$IMG"
else
    chmod 0444 ro/r.pcow
    expect 1 "$IMG" compact ro/r.pcow
fi
expect_one_line_error "compact on a read-only file"
contains "$ERR" "r.pcow" "names the read-only file"
ok "a read-only file is refused"

# Dirty: a writer died; repair, then compact
"$HELPER" write c.pcow 40M 64K 0x41
"$HELPER" write c.pcow 41M 64K 0x42
hdr c.pcow hot in_use 0x1234
expect_error "$IMG" compact c.pcow
contains "$ERR" "not closed cleanly" "dirty image"
contains "$ERR" "check -r all" "says how to repair it"
expect 0 "$IMG" check -r all c.pcow
expect 0 "$IMG" compact c.pcow
"$HELPER" verify c.pcow 40M 64K 0x41
expect 0 "$IMG" check c.pcow
ok "a dirty image is refused until check -r all"

expect 0 "$IMG" snapshot -c s1 c.pcow
sum=$(md5sum < c.pcow)
expect_error "$IMG" compact c.pcow
contains "$ERR" "1 snapshot" "snapshots"
equal "$(md5sum < c.pcow)" "$sum" "untouched with snapshots"
ok "an image with snapshots is refused"

finish
