#!/bin/bash
# The acceptance line: "pcow-img create 64 128 x.pcow" (the slides' form)
# makes a 128 GiB image with 64 KiB clusters that is tiny and checks clean.
. "$(dirname "$0")/common.sh"

expect 0 "$IMG" create 64 128 x.pcow
contains "$OUT" "Formatting 'x.pcow', fmt=pcow size=137438953472" \
    "Formatting line"
contains "$OUT" "cluster_size=65536" "Formatting line cluster size"
ok "legacy create 64 128 x.pcow"

sz=$(file_size x.pcow)
[ "$sz" -le 1048576 ] || fail "x.pcow is $sz bytes, more than 1 MiB"
ok "file size $sz <= 1 MiB"

expect 0 "$IMG" info --output=json x.pcow
contains "$OUT" '"virtual-size": 137438953472' "info json virtual size"
contains "$OUT" '"cluster-size": 65536' "info json cluster size"
equal "$(json_get "$OUT" 'd["format"]')" pcow "format"
equal "$(json_get "$OUT" 'd["filename"]')" x.pcow "filename"
equal "$(json_get "$OUT" 'd["dirty-flag"]')" False "dirty flag"
equal "$(json_get "$OUT" 'd["format-specific"]["type"]')" pcow "type"
equal "$(json_get "$OUT" 'd["format-specific"]["data"]["cow-unit"]')" \
    4096 "cow unit"
equal "$(json_get "$OUT" 'd["format-specific"]["data"]["version"]')" \
    1 "version"
json_get "$OUT" 'd["format-specific"]["data"]["storage"]["file-system"]' \
    >/dev/null || fail "storage.file-system missing"
ok "info --output=json"

expect 0 "$IMG" info x.pcow
contains "$OUT" "virtual size: 128 GiB (137438953472 bytes)" "info human"
contains "$OUT" "cluster_size: 65536" "info human cluster"
contains "$OUT" "persistence:" "info human persistence"
contains "$OUT" "file system:" "info human storage"
ok "info (human)"

expect 0 "$IMG" check x.pcow
contains "$OUT" "No errors were found on the image." "check output"
ok "check exits 0"

# The state stamp: set at create (non-zero), different for each image,
# the same in both outputs, kept by a session that changes nothing
stamp=$(json_get "$("$IMG" info --output=json x.pcow)" \
        'd["format-specific"]["data"]["state-stamp"]')
[[ $stamp =~ ^0x[0-9a-f]{16}$ ]] || fail "state stamp '$stamp' malformed"
[ "$stamp" != 0x0000000000000000 ] || fail "create left stamp 0"
expect 0 "$IMG" info x.pcow
contains "$OUT" "state stamp: $stamp" "info human state stamp"
expect 0 "$IMG" create -q stamp2.pcow 1G
contains "$("$IMG" info stamp2.pcow)" "state stamp: 0x" \
    "a second image has a stamp"
case "$("$IMG" info stamp2.pcow)" in
*"state stamp: $stamp"*) fail "two new images share stamp $stamp" ;;
esac
expect 0 "$IMG" check -r leaks x.pcow
contains "$("$IMG" info x.pcow)" "state stamp: $stamp" "kept by check -r"
ok "state stamp: new, distinct, shown by info"

expect 0 "$IMG" check --output=json x.pcow
equal "$(json_get "$OUT" 'd["corruptions"] + d["leaks"]')" 0 "check json"
ok "check --output=json"

# The modern form gives the same image.
expect 0 "$IMG" create -f pcow -o cluster_size=64K y.pcow 128G
expect 0 "$IMG" info --output=json y.pcow
contains "$OUT" '"virtual-size": 137438953472' "modern create size"
contains "$OUT" '"cluster-size": 65536' "modern create cluster"
ok "create -o cluster_size=64K y.pcow 128G"

expect 0 "$IMG" create -o cluster_size=auto z.pcow 1G
expect 0 "$IMG" check z.pcow
ok "create -o cluster_size=auto"

expect 0 "$IMG" create -o cluster_size=4K,cow_unit=4K s.pcow 1M
expect 0 "$IMG" info --output=json s.pcow
contains "$OUT" '"cluster-size": 4096' "4K clusters"
expect 0 "$IMG" create -o cluster_size=2M,cow_unit=32K b.pcow 4G
expect 0 "$IMG" info --output=json b.pcow
contains "$OUT" '"cluster-size": 2097152' "2M clusters"
equal "$(json_get "$OUT" 'd["format-specific"]["data"]["cow-unit"]')" \
    32768 "2M cow unit"
ok "cluster size limits 4K and 2M"

finish
