#!/bin/bash
# Snapshots through the CLI: create, list, revert, delete, with the bytes
# checked through libpcow after each step.
. "$(dirname "$0")/common.sh"

expect 0 "$IMG" create -q s.pcow 64M
expect 0 "$IMG" snapshot -l s.pcow
equal "$OUT" "" "no snapshots: no output"
"$HELPER" write s.pcow 0 128K 0x11
"$HELPER" write s.pcow 32M 64K 0x22
expect 0 "$IMG" snapshot -c first s.pcow
ok "snapshot -c first"

"$HELPER" write s.pcow 0 64K 0x33
"$HELPER" write s.pcow 48M 4K 0x44
expect 0 "$IMG" snapshot -c second s.pcow
"$HELPER" write s.pcow 0 4K 0x55
ok "snapshot -c second after more writes"

expect 0 "$IMG" snapshot -l s.pcow
contains "$OUT" "first" "list shows first"
contains "$OUT" "second" "list shows second"
contains "$OUT" "ID" "list header"
equal "$(printf '%s\n' "$OUT" | grep -c -E '^[0-9]+ ')" 2 "two rows"
ok "snapshot -l lists both"

expect 0 "$IMG" info --output=json s.pcow
equal "$(json_get "$OUT" 'len(d["snapshots"])')" 2 "json snapshots"
equal "$(json_get "$OUT" 'd["snapshots"][0]["name"]')" first "json name"
equal "$(json_get "$OUT" 'd["snapshots"][0]["vm-state-size"]')" 0 "vmstate"
equal "$(json_get "$OUT" 'd["snapshots"][0]["virtual-size"]')" \
    67108864 "snapshot virtual size"
json_get "$OUT" 'd["snapshots"][1]["date-sec"] > 1500000000' | \
    grep -q True || fail "snapshot date"
ok "info json lists snapshots with id, name, date, size"

expect 0 "$IMG" snapshot -U -l s.pcow
ok "snapshot -U -l"

expect 0 "$IMG" check s.pcow
ok "check clean with snapshots"

expect 0 "$IMG" snapshot -a first s.pcow
"$HELPER" verify s.pcow 0 128K 0x11
"$HELPER" verify s.pcow 32M 64K 0x22
"$HELPER" verify s.pcow 48M 4K 0
ok "snapshot -a first: content of the first snapshot"

expect 0 "$IMG" snapshot -a second s.pcow
"$HELPER" verify s.pcow 0 64K 0x33
"$HELPER" verify s.pcow 64K 64K 0x11
"$HELPER" verify s.pcow 32M 64K 0x22
"$HELPER" verify s.pcow 48M 4K 0x44
ok "snapshot -a second: content of the second snapshot"

# Write after revert, then revert again: the snapshot is intact.
"$HELPER" write s.pcow 32M 64K 0x66
expect 0 "$IMG" snapshot -a second s.pcow
"$HELPER" verify s.pcow 32M 64K 0x22
ok "a snapshot survives writes after it was applied"

id=$(json_get "$("$IMG" info --output=json s.pcow)" 'd["snapshots"][0]["id"]')
expect 0 "$IMG" snapshot -d "$id" s.pcow
expect 0 "$IMG" snapshot -l s.pcow
not_contains "$OUT" "first" "first deleted"
contains "$OUT" "second" "second kept"
ok "snapshot -d by id"

expect 0 "$IMG" snapshot -a second s.pcow
"$HELPER" write s.pcow 32M 64K 0x78
"$HELPER" write s.pcow 0 4M 0x77
before=$(disk_usage s.pcow)
expect 0 "$IMG" snapshot -d second s.pcow
expect 0 "$IMG" check s.pcow
after=$(disk_usage s.pcow)
"$HELPER" verify s.pcow 0 4M 0x77
"$HELPER" verify s.pcow 32M 64K 0x78
[ "$after" -lt "$before" ] || fail "delete gave no space back"
ok "snapshot -d second by name gives space back ($before -> $after bytes)"

expect 0 "$IMG" snapshot -l s.pcow
not_contains "$OUT" "second" "second deleted"
ok "no snapshots left"

expect_error "$IMG" snapshot -a nosuch s.pcow
expect_error "$IMG" snapshot -d nosuch s.pcow
expect 0 "$IMG" snapshot -c dup s.pcow
expect_error "$IMG" snapshot -c dup s.pcow
expect_error "$IMG" snapshot -c "" s.pcow
expect_error "$IMG" snapshot -c "$(head -c 300 /dev/zero | tr '\0' a)" s.pcow
expect_error "$IMG" snapshot -l -c x s.pcow
expect_error "$IMG" snapshot -U -c x s.pcow
expect 0 "$IMG" check s.pcow
ok "snapshot errors: unknown name, duplicate, empty, too long, two actions"

# The documented lookup of -a/-d: a name wins over an id (docs/pcow.rst,
# Live management; pcow-img snapshot --help)
expect 0 "$IMG" create -q ids.pcow 1M
expect 0 "$IMG" snapshot -c first ids.pcow
expect 0 "$IMG" snapshot -c 1 ids.pcow
expect 0 "$IMG" snapshot -d 1 ids.pcow
run "$IMG" snapshot -l ids.pcow
contains "$OUT" "first" "-d 1 kept id 1 ('first')"
equal "$(grep -cE '^[0-9]+ +1 ' <<<"$OUT")" 0 \
    "-d 1 deleted the snapshot named '1'"
expect 0 "$IMG" snapshot -d 1 ids.pcow
equal "$("$IMG" snapshot -l ids.pcow)" "" "then -d 1 is id 1"
ok "snapshot -d: the name first, else the decimal id"

finish
