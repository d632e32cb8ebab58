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

# VM state stored with a snapshot (QEMU's savevm without a disk): snapshot
# -l and info show VM SIZE and VM CLOCK as qemu-img does, JSON too; check
# counts its clusters; the delete frees them (no leak), and the feature bit
# goes with the last one.
expect 0 "$IMG" create -q -o cluster_size=64K vm.pcow 16M
"$HELPER" write vm.pcow 0 64K 7
expect 0 "$IMG" snapshot -c plain vm.pcow
"$HELPER" snapshot-vm vm.pcow s1 300K 3723004000000
expect 0 "$IMG" snapshot -l vm.pcow
grep -E '^1 +plain +0 B .* 0000:00:00\.000 +--$' <<<"$OUT" >/dev/null ||
    fail "plain snapshot: VM SIZE 0 B, VM CLOCK 0: $OUT"
grep -E '^2 +s1 +300 KiB .* 0001:02:03\.004 +--$' <<<"$OUT" >/dev/null ||
    fail "s1: VM SIZE 300 KiB, VM CLOCK 0001:02:03.004: $OUT"
ok "snapshot -l shows VM SIZE and VM CLOCK"
expect 0 "$IMG" info vm.pcow
contains "$OUT" "300 KiB" "info lists the VM state's size"
contains "$OUT" "VM state clusters: 5" "info counts its clusters"
expect 0 "$IMG" info --output=json vm.pcow
equal "$(json_get "$OUT" 'd["snapshots"][1]["vm-state-size"]')" 307200 \
    "json vm-state-size"
equal "$(json_get "$OUT" 'd["snapshots"][1]["vm-clock-sec"]')" 3723 \
    "json vm-clock-sec"
equal "$(json_get "$OUT" 'd["snapshots"][1]["vm-clock-nsec"]')" 4000000 \
    "json vm-clock-nsec"
FEAT='d["format-specific"]["data"]["incompatible-features"]'
equal "$(json_get "$OUT" "$FEAT")" 2 "json: the VM_STATE feature bit"
ok "info --output=json: vm-state-size, vm-clock-sec/-nsec, feature bit"
expect 0 "$IMG" check --output=json vm.pcow
equal "$(json_get "$OUT" 'd["vm-state-clusters"]')" 5 "check counts them"
equal "$(json_get "$OUT" 'd["leaks"]')" 0 "no leaks"
expect 0 "$IMG" check vm.pcow
contains "$OUT" "5 clusters hold the VM state of snapshots" "check human"
ok "check counts the VM state clusters"
expect 0 "$IMG" snapshot -a s1 vm.pcow
expect 0 "$IMG" snapshot -a plain vm.pcow
expect 0 "$IMG" check --output=json vm.pcow
equal "$(json_get "$OUT" 'd["vm-state-clusters"]')" 5 "kept by reverts"
expect 0 "$IMG" snapshot -d s1 vm.pcow
expect 0 "$IMG" check --output=json vm.pcow
equal "$(json_get "$OUT" 'd["vm-state-clusters"]')" 0 "freed by delete"
equal "$(json_get "$OUT" 'd["leaks"]')" 0 "no leaks after the delete"
expect 0 "$IMG" info --output=json vm.pcow
equal "$(json_get "$OUT" "$FEAT")" 0 "the bit goes with the last VM state"
"$HELPER" verify vm.pcow 0 64K 7 || fail "data kept"
ok "snapshot -d frees the VM state: no leaks, feature bit cleared"

finish
