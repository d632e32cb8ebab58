#!/bin/bash
# resize: grow, shrink (with --shrink), relative sizes.
. "$(dirname "$0")/common.sh"

vsize() {
    json_get "$("$IMG" info --output=json "$1")" 'd["virtual-size"]'
}

expect 0 "$IMG" create -q r.pcow 16M
"$HELPER" write r.pcow 0 64K 0x01
"$HELPER" write r.pcow 15M 1M 0x02
expect 0 "$IMG" resize r.pcow 1G
contains "$OUT" "Image resized." "resize output"
equal "$(vsize r.pcow)" 1073741824 "grown"
"$HELPER" verify r.pcow 0 64K 0x01
"$HELPER" verify r.pcow 15M 1M 0x02
"$HELPER" verify r.pcow 16M 1M 0
"$HELPER" write r.pcow 1023M 1M 0x03
"$HELPER" verify r.pcow 1023M 1M 0x03
expect 0 "$IMG" check r.pcow
ok "grow 16M -> 1G keeps data, new space is usable"

expect 0 "$IMG" resize r.pcow +1G
equal "$(vsize r.pcow)" 2147483648 "+1G"
ok "resize +1G"

# Grow far enough to need a larger L1 table.
expect 0 "$IMG" resize r.pcow 300G
equal "$(vsize r.pcow)" 322122547200 "300G"
"$HELPER" write r.pcow 299G 64K 0x04
"$HELPER" verify r.pcow 299G 64K 0x04
"$HELPER" verify r.pcow 15M 1M 0x02
expect 0 "$IMG" check r.pcow
ok "grow to 300G (larger L1 table)"

expect_error "$IMG" resize r.pcow 8M
contains "$ERR" "--shrink" "shrink needs --shrink"
equal "$(vsize r.pcow)" 322122547200 "untouched"
ok "shrinking without --shrink is refused"

expect 0 "$IMG" resize --shrink r.pcow 8M
equal "$(vsize r.pcow)" 8388608 "shrunk"
"$HELPER" verify r.pcow 0 64K 0x01
expect 0 "$IMG" check r.pcow
ok "resize --shrink to 8M"

expect 0 "$IMG" resize r.pcow 16M
"$HELPER" verify r.pcow 15M 1M 0
ok "data beyond a shrink is gone after growing again"

# A shrink killed right after its header commit leaves its old mappings
# beyond the new end: check counts them as leaks, and neither a grow nor a
# repair may let their data show again.
expect 0 "$IMG" create -q k.pcow 16M
"$HELPER" write k.pcow 0 64K 0x01
"$HELPER" write k.pcow 15M 1M 0x02
expect 137 "$HELPER" shrink-kill k.pcow 8M
equal "$(vsize k.pcow)" 8388608 "the killed shrink committed"
expect 3 "$IMG" check k.pcow
contains "$OUT" "beyond the virtual size" "check names the stale mappings"
expect 3 "$IMG" check --output=json k.pcow
equal "$(json_get "$OUT" 'd["stale-mappings"]')" 16 "16 stale mappings"
expect 0 "$IMG" resize k.pcow 16M
"$HELPER" verify k.pcow 8M 8M 0
"$HELPER" verify k.pcow 0 64K 0x01
expect 0 "$IMG" check k.pcow
ok "shrink killed after its commit: flagged as leaks, a grow reads zeros"

"$HELPER" write k.pcow 15M 1M 0x03
expect 137 "$HELPER" shrink-kill k.pcow 8M
expect 0 "$IMG" check -r leaks k.pcow
contains "$OUT" "repaired" "repair reported"
expect 0 "$IMG" check k.pcow
expect 0 "$IMG" resize k.pcow 16M
"$HELPER" verify k.pcow 8M 8M 0
ok "check -r leaks clears what a killed shrink left"

expect 0 "$IMG" resize --shrink r.pcow -4M
equal "$(vsize r.pcow)" 12582912 "-4M"
ok "resize --shrink FILE -4M"

expect_error "$IMG" resize --shrink r.pcow -12M
expect_error "$IMG" resize r.pcow 0
expect_error "$IMG" resize r.pcow 1000
expect_error "$IMG" resize r.pcow 12abc
expect_error "$IMG" resize r.pcow
equal "$(vsize r.pcow)" 12582912 "untouched"
ok "bad sizes refused, image untouched"

# An overlay, shrunk then grown, reads zeros in the cut range like a
# standalone image: its base never shows there (pcow and raw bases, a cut
# inside a cluster).
expect 0 "$IMG" create -q ob.pcow 16M
"$HELPER" write ob.pcow 0 16M 0xbb
head -c 16M /dev/zero | tr '\0' '\273' >ob.raw
for b in ob.pcow ob.raw; do
    expect 0 "$IMG" create -q -b $b ov.pcow
    "$HELPER" write ov.pcow 0 4K 0x01
    expect 0 "$IMG" resize --shrink ov.pcow 8204K
    expect 0 "$IMG" resize ov.pcow 16M
    "$HELPER" verify ov.pcow 0 4K 0x01
    "$HELPER" verify ov.pcow 4K 8200K 0xbb
    "$HELPER" verify ov.pcow 8204K 7988K 0
    expect 0 "$IMG" info --output=json ov.pcow
    equal "$(json_get "$OUT" 'd["backing-limit"]')" 8400896 "$b: limit"
    expect 0 "$IMG" convert -O raw ov.pcow ov.raw
    { head -c 4096 /dev/zero | tr '\0' '\001'
      head -c $((8400896 - 4096)) /dev/zero | tr '\0' '\273'
      head -c $((16777216 - 8400896)) /dev/zero; } >want.raw
    cmp want.raw ov.raw ||
        fail "$b: convert -O raw: not base below the cut and zeros past it"
    "$HELPER" write ov.pcow 10M 4K 0x02
    "$HELPER" verify ov.pcow 10M 4K 0x02
    expect 0 "$IMG" check ov.pcow
    rm -f ov.pcow ov.raw want.raw
    ok "overlay on $b: shrink + grow reads zeros in the cut range"
done

# commit makes the base read what the overlay shows: zeros past the cut
expect 0 "$IMG" create -q -b ob.pcow ov.pcow
expect 0 "$IMG" resize --shrink ov.pcow 8M
expect 0 "$IMG" resize ov.pcow 16M
"$HELPER" write ov.pcow 12M 4K 0x03
expect 0 "$IMG" commit ov.pcow
"$HELPER" verify ob.pcow 0 8M 0xbb
"$HELPER" verify ob.pcow 8M 4M 0
"$HELPER" verify ob.pcow 12M 4K 0x03
"$HELPER" verify ob.pcow 12292K 4092K 0
"$HELPER" verify ov.pcow 8M 4M 0
"$HELPER" verify ov.pcow 12M 4K 0x03
expect 0 "$IMG" info --output=json ov.pcow
equal "$(json_get "$OUT" '"backing-limit" in d')" False "limit cleared"
ok "commit of a cut overlay: the base reads zeros past the cut too"

truncate -s 1M f.raw
expect_error "$IMG" resize f.raw 2M
expect 0 "$IMG" resize -f raw f.raw 2M
equal "$(file_size f.raw)" 2097152 "raw grown"
ok "raw files need -f raw"

finish
