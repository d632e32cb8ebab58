#!/bin/bash
# pcow-img clone: an overlay of a template's snapshot.  What the clone
# shows, where its base is stored, what info says on both sides, the
# refusals (one line, exit 1, nothing left behind) and template safety:
# delete refused, the lock while a clone is open, template writes and
# reverts that leave an offline clone's view alone.
. "$(dirname "$0")/common.sh"

expect 0 "$IMG" create -q -o cluster_size=64K tmpl.pcow 8M
"$HELPER" write tmpl.pcow 0 1M 0x11
expect 0 "$IMG" snapshot -c gold tmpl.pcow
"$HELPER" write tmpl.pcow 0 64K 0x22
mkdir vms
expect 0 "$IMG" clone tmpl.pcow@gold vms/a.pcow
contains "$OUT" "Cloned vms/a.pcow" "clone says what it made"
"$HELPER" verify vms/a.pcow 0 1M 0x11
"$HELPER" verify vms/a.pcow 1M 64K 0
ok "clone shows the snapshot, not the template's active layer"

expect 0 "$IMG" info vms/a.pcow
contains "$OUT" "backing file: ../tmpl.pcow (snapshot gold, id 1)" \
    "info of the clone names base and snapshot"
contains "$OUT" "virtual size: 8 MiB" "the snapshot's size"
expect 0 "$IMG" info --output=json vms/a.pcow
equal "$(json_get "$OUT" 'd["backing-snapshot-id"]')" 1 "json id"
equal "$(json_get "$OUT" 'd["backing-snapshot-name"]')" gold "json name"
equal "$(json_get "$OUT" 'd["backing-filename"]')" ../tmpl.pcow \
    "stored relative to the clone's directory"
ok "info of a clone (human and JSON)"

expect 0 "$IMG" info tmpl.pcow
contains "$OUT" "snapshot gold (id 1): clones: yes" "template info"
expect 0 "$IMG" info --output=json tmpl.pcow
equal "$(json_get "$OUT" 'd["snapshots"][0]["has-clones"]')" True \
    "json has-clones"
ok "info of the template says the snapshot has clones"

# A second clone by id, in the same directory; writes stay in each clone
expect 0 "$IMG" clone -q tmpl.pcow@1 b.pcow
equal "$OUT" "" "-q prints nothing"
"$HELPER" write vms/a.pcow 4K 4K 0xaa
"$HELPER" write b.pcow 4K 4K 0xbb
"$HELPER" verify vms/a.pcow 4K 4K 0xaa
"$HELPER" verify b.pcow 4K 4K 0xbb
"$HELPER" verify b.pcow 8K 4K 0x11
"$HELPER" verify tmpl.pcow 4K 4K 0x22
"$HELPER" verify tmpl.pcow 64K 4K 0x11
ok "each clone keeps its own writes; the template is unchanged"

expect 0 "$IMG" map --output=json b.pcow
equal "$(depth_at "$OUT" 0)" 1 "first extent from the template"
ok "unwritten ranges map from the template (depth 1)"

expect_error "$IMG" clone tmpl.pcow@nope c.pcow
contains "$ERR" "tmpl.pcow: snapshot 'nope' not found" "missing snapshot"
[ ! -e c.pcow ] || fail "missing snapshot left c.pcow"
ok "a missing snapshot is refused, nothing left"

cp b.pcow b.copy
expect_error "$IMG" clone tmpl.pcow@gold b.pcow
contains "$ERR" "b.pcow: file exists" "existing NEW"
cmp b.pcow b.copy || fail "existing NEW was changed"
ok "an existing NEW is refused and left as it was"

expect_error "$IMG" clone tmpl.pcow b2.pcow
contains "$ERR" "TEMPLATE@SNAPSHOT" "no @"
head -c 1M /dev/zero >raw.img
expect_error "$IMG" clone raw.img@1 b2.pcow
[ ! -e b2.pcow ] || fail "bad template left b2.pcow"
ok "bad arguments: one line each"

hold_image tmpl.pcow
expect_error "$IMG" clone tmpl.pcow@gold c.pcow
contains "$ERR" "tmpl.pcow: image is in use by another process" "in use"
[ ! -e c.pcow ] || fail "template in use left c.pcow"
release_image
ok "a template in use by a writer is refused"

# As any open overlay holds its base (what clones rely on)
expect 0 "$IMG" create -q -b tmpl.pcow -F pcow ov.pcow
hold_image ov.pcow ro
expect_error "$IMG" snapshot -c x tmpl.pcow
contains "$ERR" "tmpl.pcow: image is in use by another process" "base held"
release_image
rm -f ov.pcow
ok "an open overlay holds its base's read lock: no writer opens the base"

# A running clone holds the template: no writer may open it
hold_image vms/a.pcow ro
for cmd in "snapshot -c x" "snapshot -a gold" "snapshot -d gold"; do
    expect_error "$IMG" $cmd tmpl.pcow
    contains "$ERR" "tmpl.pcow: image is in use by another process" "$cmd"
done
expect_error "$IMG" resize tmpl.pcow 16M
contains "$ERR" "in use by another process" "resize"
# The marked snapshot needs no write: another clone is made all the same
expect 0 "$IMG" clone -q tmpl.pcow@gold c.pcow
release_image
ok "while a clone is open the template cannot be written, reverted or deleted"

expect_error "$IMG" snapshot -d gold tmpl.pcow
contains "$ERR" "tmpl.pcow: snapshot 'gold' has clones (made by pcow-img \
clone)" "delete refused"
contains "$ERR" "--force" "advice"
ok "snapshot -d refuses a snapshot with clones"

# Offline clones: writing and reverting the template changes nothing
"$HELPER" write tmpl.pcow 0 1M 0x33
expect 0 "$IMG" snapshot -a gold tmpl.pcow
"$HELPER" write tmpl.pcow 128K 64K 0x44
"$HELPER" verify c.pcow 0 1M 0x11
"$HELPER" verify vms/a.pcow 128K 64K 0x11
ok "template writes and reverts leave clones' views as they were"

expect_error "$IMG" commit c.pcow
contains "$ERR" "c.pcow: a clone (its base is snapshot id 1 of tmpl.pcow) \
cannot be committed" "commit refused"
"$HELPER" verify tmpl.pcow 128K 64K 0x44
ok "commit of a clone is refused (the snapshot is frozen)"

expect 0 "$IMG" check c.pcow
expect 0 "$IMG" check tmpl.pcow
ok "check: clone and template clean"

# rebase gives a clone an ordinary base reference: safe keeps its content
expect 0 "$IMG" clone -q tmpl.pcow@gold r.pcow
expect 0 "$IMG" rebase -b '' r.pcow
"$HELPER" verify r.pcow 0 1M 0x11
expect 0 "$IMG" info --output=json r.pcow
equal "$(json_get "$OUT" 'd.get("backing-snapshot-id")')" None "no id"
equal "$(json_get "$OUT" \
    'd["format-specific"]["data"]["incompatible-features"] & 4')" 0 "no bit"
expect 0 "$IMG" clone -q tmpl.pcow@gold u.pcow
expect 0 "$IMG" rebase -u -b tmpl.pcow -F pcow u.pcow
"$HELPER" verify u.pcow 128K 64K 0x44
rm -f r.pcow u.pcow
ok "rebase of a clone: safe keeps the content, -u shows the active layer"

expect 0 "$IMG" snapshot --force -d gold tmpl.pcow
expect 0 "$IMG" info c.pcow
contains "$OUT" "(snapshot id 1, not found in the base)" "info of orphan"
expect 2 "$IMG" compare c.pcow b.pcow
expect_one_line_error "compare"
contains "$ERR" "has no snapshot with id 1" "open of orphan"
run "$IMG" check c.pcow
[ "$RC" -ne 0 ] || fail "check of an orphan clone passed"
contains "$OUT" "First problem: c.pcow: base ./tmpl.pcow has no snapshot \
with id 1" "check of orphan"
ok "forced delete: the clones say which snapshot is missing"

finish
