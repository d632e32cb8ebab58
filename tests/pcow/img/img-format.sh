#!/bin/bash
# The on-disk format at its edges: the magic bytes the spec defines, header
# generation and snapshot id limits, a file shorter than its frontier and a
# frontier lower than the clusters the tables use.  Images are edited with
# pcow-hdr.py, written from docs/interop/pcow-spec.rst independently of
# libpcow.
. "$(dirname "$0")/common.sh"

hex_at() {      # hex_at FILE OFFSET COUNT
    od -An -tx1 -j "$2" -N "$3" "$1" | tr -d ' \n'
}

# --- magic: the bytes "PCOW" (50 43 4f 57) in both slots ----------------
expect 0 "$IMG" create -q m.pcow 64M
equal "$(hex_at m.pcow 0 4)" 50434f57 "magic of slot A on disk"
equal "$(hdr m.pcow slot)" A "slot A current after create"
expect 0 "$IMG" resize m.pcow 128M
equal "$(hex_at m.pcow 1536 4)" 50434f57 "magic of slot B on disk"
equal "$(hdr m.pcow slot)" B "slot B current after a header commit"
ok "magic bytes on disk are 50 43 4f 57 ('PCOW') in slot A and slot B"

hdr spec.pcow mkimage $((256 << 20))
expect 0 "$IMG" check spec.pcow
expect 0 "$IMG" info --output=json spec.pcow
equal "$(json_get "$OUT" 'd["virtual-size"]')" $((256 << 20)) "spec size"
# Its hot line has stamp 0, as images made before the field existed
equal "$(hdr spec.pcow hot stamp)" 0 "stamp of a spec-made image"
expect 0 "$IMG" info spec.pcow
contains "$OUT" "state stamp: unknown" "stamp 0 shown as unknown"
"$HELPER" write spec.pcow 1M 64K 0x5c
"$HELPER" verify spec.pcow 1M 64K 0x5c
expect 0 "$IMG" check spec.pcow
[ "$(hdr spec.pcow hot stamp)" != 0 ] || fail "a clean close left stamp 0"
equal "$(hdr spec.pcow hot in_use)" 0 "closed cleanly"
ok "an image written from the spec alone opens, takes writes, checks clean"

# Any stamp is valid: check and info accept it, a reader keeps it
hdr spec.pcow hot stamp $((0x7fffffffffffffff))
expect 0 "$IMG" check spec.pcow
expect 0 "$IMG" info spec.pcow
contains "$OUT" "state stamp: 0x7fffffffffffffff" "any stamp shown"
"$HELPER" verify spec.pcow 1M 64K 0x5c
equal "$(hdr spec.pcow hot stamp)" $((0x7fffffffffffffff)) "kept by a reader"
ok "check and info accept any stamp value"

# --- header generation: never wraps --------------------------------------
expect 0 "$IMG" create -q g.pcow 64M
"$HELPER" write g.pcow 0 64K 0x01
expect 0 "$IMG" snapshot -c s g.pcow
"$HELPER" write g.pcow 0 64K 0x02
hdr g.pcow set generation 0xffffffffffffffff
expect 0 "$IMG" check g.pcow
expect_error "$IMG" snapshot -a s g.pcow
contains "$ERR" "generation" "revert names the generation"
expect_error "$IMG" snapshot -c t g.pcow
expect_error "$IMG" snapshot -d s g.pcow
expect_error "$IMG" resize g.pcow 128M
expect 0 "$IMG" check g.pcow
"$HELPER" verify g.pcow 0 64K 0x02
expect 0 "$IMG" snapshot -l g.pcow
contains "$OUT" " s " "snapshot s still listed"
not_contains "$OUT" " t " "no snapshot t"
expect 0 "$IMG" info --output=json g.pcow
equal "$(json_get "$OUT" 'd["virtual-size"]')" $((64 << 20)) "size kept"
ok "generation 2^64-1: header commits refused, nothing changed or lost"

# --- next_snapshot_id: 1 .. 2^64-1, above every id -----------------------
expect 0 "$IMG" create -q n.pcow 64M
"$HELPER" write n.pcow 0 64K 0x03
hdr n.pcow set next_snapshot_id 0
expect 2 "$IMG" check n.pcow
contains "$OUT" "next_snapshot_id" "check names the field"
expect_error "$IMG" snapshot -c s n.pcow
contains "$ERR" "next_snapshot_id" "open names the field"
expect 0 "$IMG" check -r all n.pcow
expect 0 "$IMG" check n.pcow
expect 0 "$IMG" snapshot -c s n.pcow
expect 0 "$IMG" snapshot -l n.pcow
contains "$OUT" "1         s" "snapshot got id 1"
"$HELPER" verify n.pcow 0 64K 0x03
ok "next_snapshot_id 0: refused at open, check -r all repairs it"

hdr n.pcow set next_snapshot_id 0xffffffffffffffff
expect 0 "$IMG" check n.pcow
expect_error "$IMG" snapshot -c t n.pcow
contains "$ERR" "snapshot id" "create says the ids are used up"
expect 0 "$IMG" check n.pcow
expect 0 "$IMG" snapshot -l n.pcow
not_contains "$OUT" " t " "no snapshot t"
"$HELPER" write n.pcow 0 64K 0x04
expect 0 "$IMG" snapshot -a s n.pcow
"$HELPER" verify n.pcow 0 64K 0x03
ok "next_snapshot_id 2^64-1: create refused, the image stays valid"

# Images the old create wrote: a snapshot with id 0 / id 2^64-1.
for bad in 0 0xffffffffffffffff; do
    rm -f i.pcow
    expect 0 "$IMG" create -q i.pcow 64M
    "$HELPER" write i.pcow 0 64K 0x05
    expect 0 "$IMG" snapshot -c s i.pcow
    expect 0 "$IMG" snapshot -c u i.pcow
    "$HELPER" write i.pcow 0 64K 0x06
    hdr i.pcow snapid 0 "$bad"
    [ "$bad" = 0 ] || hdr i.pcow set next_snapshot_id 0
    expect 2 "$IMG" check i.pcow
    expect_error "$IMG" snapshot -l i.pcow
    expect 0 "$IMG" check -r all i.pcow
    expect 0 "$IMG" check i.pcow
    expect 0 "$IMG" snapshot -l i.pcow
    contains "$OUT" " s " "snapshot s kept"
    contains "$OUT" "2         u" "snapshot u keeps id 2"
    expect 0 "$IMG" snapshot -a s i.pcow
    "$HELPER" verify i.pcow 0 64K 0x05
    expect 0 "$IMG" snapshot -c w i.pcow
done
ok "snapshot ids 0 and 2^64-1: check reports them, check -r all renumbers"

# No id left above the others (2^64-2 held, 2^64-1 bad or duplicated):
# repair reuses the lowest free id rather than leave the image unopenable.
for second in 0xffffffffffffffff 0xfffffffffffffffe; do
    rm -f x.pcow
    expect 0 "$IMG" create -q x.pcow 64M
    "$HELPER" write x.pcow 0 64K 0x07
    expect 0 "$IMG" snapshot -c s x.pcow
    expect 0 "$IMG" snapshot -c u x.pcow
    hdr x.pcow snapid 0 0xfffffffffffffffe
    hdr x.pcow snapid 1 "$second"
    hdr x.pcow set next_snapshot_id 0xffffffffffffffff
    expect 2 "$IMG" check x.pcow
    expect 0 "$IMG" check -r all x.pcow
    expect 0 "$IMG" check x.pcow
    expect 0 "$IMG" snapshot -l x.pcow
    contains "$OUT" "18446744073709551614 s " "snapshot s keeps its id"
    contains "$OUT" "1         u" "snapshot u gets the lowest free id"
    expect 0 "$IMG" snapshot -a u x.pcow
    "$HELPER" verify x.pcow 0 64K 0x07
done
ok "ids exhausted: check -r all reuses the lowest free id"

# --- a file shorter than its frontier ------------------------------------
expect 0 "$IMG" create -q t.pcow 64M
"$HELPER" write t.pcow 0 192K 0x09
size=$(file_size t.pcow)
equal "$(hdr t.pcow hot frontier)" "$size" "frontier at the end of the file"
truncate -s $((size - 4096)) t.pcow
expect 2 "$IMG" check t.pcow
contains "$OUT" "truncated" "check says the file is truncated"
expect 2 "$IMG" check -r leaks t.pcow
expect_error "$IMG" snapshot -c s t.pcow
contains "$ERR" "truncated" "a writer refuses it"
expect_error "$IMG" info t.pcow
equal "$(file_size t.pcow)" $((size - 4096)) "nothing extended the file"
expect 0 "$IMG" check -r all t.pcow
expect 0 "$IMG" check t.pcow
"$HELPER" verify t.pcow 0 $((192 * 1024 - 4096)) 0x09
"$HELPER" verify t.pcow $((192 * 1024 - 4096)) 4096 0
ok "a copy cut inside its last cluster: refused, check flags it"

# --- a frontier below clusters the tables use ----------------------------
expect 0 "$IMG" create -q f.pcow 256M
"$HELPER" write f.pcow 0 192K 0x0a
"$HELPER" write f.pcow 200M 64K 0x0b     # a second L2 table, then data
front=$(hdr f.pcow hot frontier)
hdr f.pcow hot frontier $((front - 3 * 65536))
expect 2 "$IMG" check f.pcow
contains "$OUT" "frontier" "check names the frontier"
not_contains "$OUT" "leaked" "referenced clusters are no leaks"
expect 2 "$IMG" check --output=json f.pcow
equal "$(json_get "$OUT" 'd["leaks"]')" 0 "json: no leaks"
expect_error "$IMG" snapshot -c s f.pcow
expect 0 "$IMG" check -r all f.pcow
expect 0 "$IMG" check f.pcow
equal "$(hdr f.pcow hot frontier)" "$front" "frontier raised back"
"$HELPER" verify f.pcow 0 192K 0x0a
"$HELPER" verify f.pcow 200M 64K 0x0b
ok "frontier too low: check reports it, check -r all raises it, no loss"

# --- a frontier that is 0 or not a multiple of the cluster size ----------
# One bad word in the hot line: check reports it, check -r all rewrites it
# (at least the end of the clusters in use), nothing is lost.
for bad in 0 4096 $((front + 1)) $((front - 65536 + 1)); do
    cp f.pcow g.pcow
    hdr g.pcow hot frontier "$bad"
    expect_error "$IMG" info g.pcow
    expect 2 "$IMG" check g.pcow
    contains "$OUT" "frontier" "check names the bad frontier $bad"
    expect 0 "$IMG" check -r all g.pcow
    expect 0 "$IMG" check g.pcow
    g=$(hdr g.pcow hot frontier)
    equal $((g % 65536)) 0 "frontier $bad repaired to a cluster multiple"
    [ "$g" -ge "$front" ] || fail "frontier $bad repaired to $g < $front"
    "$HELPER" verify g.pcow 0 192K 0x0a
    "$HELPER" verify g.pcow 200M 64K 0x0b
    "$HELPER" write g.pcow 100M 64K 0x0c
    "$HELPER" verify g.pcow 100M 64K 0x0c
    "$HELPER" verify g.pcow 0 192K 0x0a
    expect 0 "$IMG" check g.pcow
done
ok "frontier 0 or unaligned: check reports it, check -r all repairs it"

# --- a frontier far beyond anything the image could use -----------------
# (found by the fuzzer: check sized its walk by it and ran out of memory)
expect 0 "$IMG" create -q -o cluster_size=4K h.pcow 1M
"$HELPER" write h.pcow 0 8K 0x0d
size=$(file_size h.pcow)
hdr h.pcow hot frontier $((0x900000000000))
expect_error "$IMG" info h.pcow
expect 2 "$IMG" check h.pcow
contains "$OUT" "frontier" "check names the frontier"
expect 0 "$IMG" check -r all h.pcow
expect 0 "$IMG" check h.pcow
[ "$(file_size h.pcow)" -le "$size" ] || fail "repair grew the file"
g=$(hdr h.pcow hot frontier)
[ "$g" -le "$size" ] && [ $((g % 4096)) = 0 ] || fail "frontier now $g"
"$HELPER" verify h.pcow 0 8K 0x0d
"$HELPER" write h.pcow 512K 4K 0x0e
"$HELPER" verify h.pcow 512K 4K 0x0e
expect 0 "$IMG" check h.pcow
ok "frontier far past the file: check reports it, check -r all lowers it"

finish
