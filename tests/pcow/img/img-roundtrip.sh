#!/bin/bash
# raw -> pcow -> raw round trip of a sparse 1 GiB file with random data at
# 50 random places: byte-identical, and the pcow file holds no more than
# the touched clusters plus metadata.
. "$(dirname "$0")/common.sh"

SIZE=$((1 << 30))
CS=65536
truncate -s $SIZE src.raw
declare -A touched
for i in $(seq 1 50); do
    off=$(( (RANDOM * 32768 + RANDOM) % (SIZE - 131072) ))
    len=$(( (RANDOM % 65536) + 1 ))
    put_random src.raw $off $len
    for ((c = off / CS; c <= (off + len - 1) / CS; c++)); do
        touched[$c]=1
    done
done
# Data right at both ends, too.
put_random src.raw 0 100
put_random src.raw $((SIZE - 100)) 100
touched[0]=1
touched[$(( (SIZE - 1) / CS ))]=1
ntouched=${#touched[@]}
equal "$(file_size src.raw)" $SIZE "source size"
ok "sparse 1 GiB source with random data ($ntouched clusters touched)"

expect 0 "$IMG" convert -O pcow src.raw mid.pcow
expect 0 "$IMG" check mid.pcow
ok "convert raw -> pcow; check clean"

expect 0 "$IMG" info --output=json mid.pcow
equal "$(json_get "$OUT" 'd["virtual-size"]')" $SIZE "pcow virtual size"
# Metadata: cluster 0, one L1 cluster, at most 8 L2 tables (1 GiB / 128 MiB).
limit=$(( (ntouched + 1 + 1 + 8) * CS ))
du=$(disk_usage mid.pcow)
fs=$(file_size mid.pcow)
[ "$du" -le "$limit" ] || fail "pcow uses $du bytes on disk, limit $limit"
[ "$fs" -le "$limit" ] || fail "pcow file is $fs bytes, limit $limit"
ok "pcow file $fs bytes ($du on disk) <= data + metadata ($limit)"

expect 0 "$IMG" compare src.raw mid.pcow
contains "$OUT" "Images are identical." "compare raw pcow"
ok "compare src.raw mid.pcow: identical"

expect 0 "$IMG" convert -p -f pcow -O raw mid.pcow out.raw
contains "$OUT" "100.00/100%" "progress output"
cmp src.raw out.raw || fail "round trip differs"
equal "$(file_size out.raw)" $SIZE "output size"
ok "convert pcow -> raw is byte-identical (cmp)"

rdu=$(disk_usage out.raw)
[ "$rdu" -le $(( (ntouched + 2) * CS * 2 )) ] || \
    fail "raw output not sparse: $rdu bytes on disk"
ok "raw output is sparse ($rdu bytes on disk)"

# Into an existing target with -n: a pcow image full of other data.
expect 0 "$IMG" create -q n.pcow 1G
"$HELPER" write n.pcow 0 4M 0x5a
"$HELPER" write n.pcow 512M 1M 0xa5
expect 0 "$IMG" convert -n -O pcow src.raw n.pcow
expect 0 "$IMG" compare src.raw n.pcow
ok "convert -n into an existing pcow image overwrites old data"

cp --sparse=always out.raw n.raw
put_byte n.raw 4096 8192 0x33
expect 0 "$IMG" convert -n -f pcow -O raw mid.pcow n.raw
cmp src.raw n.raw || fail "convert -n into raw differs"
ok "convert -n into an existing raw file"

expect 0 "$IMG" convert -O pcow -o cluster_size=4K src.raw small.pcow
expect 0 "$IMG" compare -F pcow src.raw small.pcow
expect 0 "$IMG" check small.pcow
ok "convert with -o cluster_size=4K"

# -B: the new image holds only what differs from its base.
cp --sparse=always src.raw src2.raw
put_random src2.raw 4096 12288
put_byte src2.raw 0 100 0          # zeros over the base's data
expect 0 "$IMG" convert -O pcow -B mid.pcow src2.raw delta.pcow
expect 0 "$IMG" info --output=json delta.pcow
equal "$(json_get "$OUT" 'd["backing-filename"]')" mid.pcow "-B base"
expect 0 "$IMG" compare src2.raw delta.pcow
expect 0 "$IMG" map --output=json delta.pcow
equal "$(own_data_bytes "$OUT")" 16384 \
    "only the differing blocks are in the new image"
expect 0 "$IMG" convert -O raw delta.pcow flat.raw
cmp src2.raw flat.raw || fail "flattened chain differs"
ok "convert -B: only differences stored; converting the chain flattens it"

# Odd-sized raw source: the pcow image is rounded up to 4 KiB, the extra
# bytes read as zeros.
head -c 10000 /dev/urandom > odd.raw
expect 0 "$IMG" convert -O pcow odd.raw odd.pcow
expect 0 "$IMG" info --output=json odd.pcow
equal "$(json_get "$OUT" 'd["virtual-size"]')" 12288 "odd size rounded"
expect 0 "$IMG" compare odd.raw odd.pcow
ok "odd-sized raw source"

finish
