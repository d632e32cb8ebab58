#!/bin/bash
# An image held open read-write (as by a running VM) cannot be changed by
# pcow-img; -U lets info, check and snapshot -l look at it.
. "$(dirname "$0")/common.sh"

expect 0 "$IMG" create -q l.pcow 64M
"$HELPER" write l.pcow 0 64K 0x01
expect 0 "$IMG" create -q -b l.pcow -F pcow ov.pcow
hold_image l.pcow
sum=$(md5sum < l.pcow)
ok "helper holds l.pcow read-write"

for cmd in "snapshot -c s" "snapshot -l" "resize l.pcow 128M" info check map \
           "rebase -u -b x.pcow -F pcow" "convert -O raw l.pcow o.raw"; do
    case "$cmd" in
    resize*|convert*) expect_error "$IMG" $cmd ;;
    *) expect_error "$IMG" $cmd l.pcow ;;
    esac
    contains "$ERR" "l.pcow" "$cmd names the image"
    contains "$ERR" "in use" "$cmd says it is in use"
done
[ ! -e o.raw ] || fail "convert left o.raw"
ok "locked image: every command refuses with 'in use'"

# An overlay cannot open a base that a writer holds.
expect_error "$IMG" map ov.pcow
ok "overlay whose base is written by someone else: refused"

expect 0 "$IMG" info -U l.pcow
contains "$OUT" "virtual size: 64 MiB" "info -U"
expect 0 "$IMG" info -U --output=json l.pcow
equal "$(json_get "$OUT" 'd["dirty-flag"]')" True "in use shows dirty"
run "$IMG" check -U l.pcow
[ "$RC" -eq 0 ] || [ "$RC" -eq 3 ] || fail "check -U: $RC ($ERR)"
expect 0 "$IMG" snapshot -U -l l.pcow
expect 0 "$IMG" map -U l.pcow
expect_error "$IMG" snapshot -U -c s l.pcow
expect_error "$IMG" check -U -r all l.pcow
ok "-U inspects a locked image (info, check, snapshot -l, map)"

equal "$(md5sum < l.pcow)" "$sum" "untouched while held"
release_image
expect 0 "$IMG" snapshot -c s l.pcow
expect 0 "$IMG" check l.pcow
ok "after release, writes work again and the image checks clean"

# A reader (shared lock) blocks writers but not other readers.
hold_image l.pcow ro
expect 0 "$IMG" info l.pcow
expect 0 "$IMG" map ov.pcow
expect_error "$IMG" snapshot -c t l.pcow
expect_error "$IMG" commit ov.pcow
release_image
ok "read lock: readers share, writers refused"

# A crashed writer leaves the dirty flag; the next read-write open cleans
# it.
"$HELPER" leak l.pcow 3
expect 0 "$IMG" info --output=json l.pcow
equal "$(json_get "$OUT" 'd["dirty-flag"]')" True "dirty after crash"
run "$IMG" check l.pcow
[ "$RC" -eq 0 ] || [ "$RC" -eq 3 ] || fail "check after crash: $RC"
"$HELPER" verify l.pcow 0 64K 0x01
"$HELPER" write l.pcow 1M 4K 0x02
expect 0 "$IMG" info --output=json l.pcow
equal "$(json_get "$OUT" 'd["dirty-flag"]')" False "clean after open"
expect 0 "$IMG" check l.pcow
ok "crash: dirty flag shown; the next read-write open recovers"

finish
