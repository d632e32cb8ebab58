#!/bin/bash
# check: clean images exit 0, leaks 3 (repaired by -r leaks), corruptions 2;
# human and JSON output in qemu-img's style.
. "$(dirname "$0")/common.sh"

expect 0 "$IMG" create -q l.pcow 64M
"$HELPER" write l.pcow 0 64K 0x01
expect 0 "$IMG" check l.pcow
contains "$OUT" "No errors were found on the image." "clean"
contains "$OUT" "Image end offset: " "end offset"
contains "$OUT" "allocated, " "allocation line"
expect 0 "$IMG" check --output=json l.pcow
equal "$(json_get "$OUT" 'd["filename"]')" l.pcow "json filename"
equal "$(json_get "$OUT" 'd["format"]')" pcow "json format"
equal "$(json_get "$OUT" 'd["allocated-clusters"]')" 1 "json allocated"
equal "$(json_get "$OUT" 'd["total-clusters"]')" 1024 "json total"
equal "$(json_get "$OUT" 'd["image-end-offset"]')" "$(file_size l.pcow)" \
    "json end offset"
ok "clean image: exit 0, human and json output"

# Slot B current and the L1 table moved (a grow needs a larger one): the
# on-disk edits below (hdr in common.sh) must follow slot B, since slot A
# still names the old, freed L1 table.
l1_before=$(hdr l.pcow get l1_table_offset)
expect 0 "$IMG" resize l.pcow 512M
equal "$(hdr l.pcow slot)" B "slot B is current"
[ "$(hdr l.pcow get l1_table_offset)" != "$l1_before" ] ||
    fail "the L1 table did not move"
ok "slot B current, L1 table moved"

expect_error "$IMG" check -r bogus l.pcow
expect_error "$IMG" check -r all -U l.pcow
ok "check option errors"

# A data cluster nobody references: a leak (exit 3), repaired by -r leaks.
"$HELPER" write l.pcow 8M 64K 0x08
unref_cluster l.pcow 128
expect 3 "$IMG" check l.pcow
contains "$OUT" "leaked clusters were found" "leaks reported"
expect 3 "$IMG" check --output=json l.pcow
equal "$(json_get "$OUT" 'd["leaks"] > 0 and d["corruptions"] == 0')" True \
    "json leaks"
expect 0 "$IMG" check --output=json -r leaks l.pcow
equal "$(json_get "$OUT" 'd["leaks-fixed"] > 0 and d["leaks"] == 0')" True \
    "leaks fixed"
expect 0 "$IMG" check l.pcow
"$HELPER" verify l.pcow 0 64K 0x01
"$HELPER" verify l.pcow 8M 64K 0
ok "leaked cluster: check exits 3, check -r leaks repairs it"

# A data cluster referenced twice: a corruption (exit 2).
"$HELPER" write l.pcow 16M 64K 0x10
"$HELPER" write l.pcow 20M 64K 0x20
e256=$(hdr l.pcow l2entry 256)
e320=$(hdr l.pcow l2entry 320)
dd if=l.pcow of=l.pcow bs=1 count=8 skip="$e256" seek="$e320" conv=notrunc \
    status=none
expect 2 "$IMG" check l.pcow
contains "$OUT" "errors were found on the image" "corruption reported"
expect 2 "$IMG" check --output=json l.pcow
equal "$(json_get "$OUT" 'd["corruptions"] > 0')" True "json corruptions"
expect_error "$IMG" snapshot -c x l.pcow
ok "cluster mapped twice: check exits 2, writers refuse the image"

expect 2 "$IMG" check -r leaks l.pcow
expect 0 "$IMG" check -r all l.pcow
contains "$OUT" "The following inconsistencies were found and repaired" \
    "repair report"
contains "$OUT" "No errors were found on the image." "double check"
expect 0 "$IMG" check l.pcow
"$HELPER" verify l.pcow 0 64K 0x01
expect 0 "$IMG" snapshot -c x l.pcow
ok "check -r all repairs the corruption; the image is usable again"

finish
