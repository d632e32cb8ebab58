#!/bin/bash
# map (human and json) and measure (--size and a source image).
. "$(dirname "$0")/common.sh"

CS=65536
expect 0 "$IMG" create -q m.pcow 64M
"$HELPER" write m.pcow 0 128K 0x01
"$HELPER" write m.pcow 32M 64K 0x02

expect 0 "$IMG" map --output=json m.pcow
equal "$(json_get "$OUT" 'len(d)')" 4 "four extents"
equal "$(map_ext "$OUT" 0)" "0 131072 0 True False" "first extent"
equal "$(map_ext "$OUT" 1)" "131072 $((33554432 - 131072)) 0 False True" \
    "hole extent"
equal "$(map_ext "$OUT" 2)" "33554432 65536 0 True False" "second extent"
equal "$(json_get "$OUT" 'd[3]["start"] + d[3]["length"]')" 67108864 "end"
equal "$(json_get "$OUT" 'd[0]["filename"]')" m.pcow "filename"
off=$(json_get "$OUT" 'd[0]["offset"]')
[ "$off" -ge $CS ] && [ $((off % CS)) -eq 0 ] || fail "bad offset $off"
ok "map --output=json: data and hole extents with offsets"

# The offsets map really points at the data.
off2=$(json_get "$OUT" 'd[2]["offset"]')
od -A n -t x1 -j "$off2" -N 4 m.pcow | grep -q "02 02 02 02" || \
    fail "map offset $off2 does not hold the data"
ok "map offsets point at the data in the file"

expect 0 "$IMG" map m.pcow
contains "$OUT" "Offset          Length          Mapped to       File" \
    "human header"
equal "$(printf '%s\n' "$OUT" | grep -c 'm.pcow')" 2 "two data lines"
contains "$OUT" "0x2000000       0x10000" "human extent"
ok "map (human)"

expect 0 "$IMG" create -q e.pcow 1G
expect 0 "$IMG" map --output=json e.pcow
equal "$(json_get "$OUT" 'len(d)')" 1 "one hole"
equal "$(json_get "$OUT" 'd[0]["data"]')" False "hole"
ok "map of an empty image: one hole"

# measure --size: an empty image is what create makes.
expect 0 "$IMG" measure --size 128G
req=$(printf '%s\n' "$OUT" | sed -n 's/^required size: //p')
full=$(printf '%s\n' "$OUT" | sed -n 's/^fully allocated size: //p')
expect 0 "$IMG" create -q meas.pcow 128G
equal "$req" "$(file_size meas.pcow)" "required = size of a new image"
[ "$full" -gt $((128 << 30)) ] || fail "fully allocated $full too small"
ok "measure --size 128G: required $req, fully allocated $full"

expect 0 "$IMG" measure --output=json -o cluster_size=4K --size 1G
equal "$(json_get "$OUT" 'd["fully-allocated"]')" \
    $(( 4096 + 4 * 4096 + 2048 * 4096 + 262144 * 4096 )) \
    "fully allocated with 4K clusters"
ok "measure --output=json -o cluster_size=4K"

# measure a source, then convert it: the result fits.
truncate -s 1G src.raw
put_random src.raw 0 100000
put_random src.raw 500000000 3000
put_random src.raw 1000000000 70000
expect 0 "$IMG" measure -O pcow src.raw
req=$(printf '%s\n' "$OUT" | sed -n 's/^required size: //p')
expect 0 "$IMG" convert -O pcow src.raw conv.pcow
fs=$(file_size conv.pcow)
[ "$fs" -le "$req" ] || fail "converted image $fs > measured $req"
[ "$req" -le $((fs + 4 * CS)) ] || fail "measure $req far above $fs"
ok "measure of a source: $req bytes; converted image is $fs"

# Raw output: the source's size (it died with SIGFPE: no cluster size).
expect 0 "$IMG" measure -O raw src.raw
contains "$OUT" "required size: 1073741824" "measure -O raw: the size"
ok "measure -O raw of a source"

expect 0 "$IMG" measure m.pcow
ok "measure of a pcow image"

# measure refuses exactly what create refuses (both ask libpcow).
while read -r want size opts; do
    # shellcheck disable=SC2086  # $opts is a list of words
    run "$IMG" create -q $opts cm.pcow "$size"
    crc=$RC
    rm -f cm.pcow
    # shellcheck disable=SC2086
    run "$IMG" measure $opts --size "$size"
    equal "$RC/$crc" "$want/$want" "measure/create exit for '$opts $size'"
    [ "$want" -eq 0 ] || expect_one_line_error "measure $opts --size $size"
done <<'EOF'
1 3P
1 5000
1 1P
1 3T -o cluster_size=4K
1 1G -o cluster_size=3K
1 1G -o cow_unit=1K
0 2T -o cluster_size=4K
0 512T
0 1P -o cluster_size=2M
EOF
ok "measure refuses the sizes and geometries create refuses"

expect_error "$IMG" measure
expect_error "$IMG" measure --size 1G src.raw
expect_error "$IMG" measure --size 0
expect_error "$IMG" measure --size 1G -o cluster_size=3K
ok "measure argument errors"

finish
