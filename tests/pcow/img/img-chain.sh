#!/bin/bash
# A backing chain of depth 8 made with "create -b": every level reads its
# own data, its bases' data and zeros where nobody wrote.
. "$(dirname "$0")/common.sh"

M=$((1 << 20))
expect 0 "$IMG" create -q l0.pcow 16M
"$HELPER" write l0.pcow 0 1M 0x10
for i in $(seq 1 7); do
    # No size: taken from the base.
    expect 0 "$IMG" create -b "l$((i - 1)).pcow" -F pcow "l$i.pcow"
    contains "$OUT" "backing_file=l$((i - 1)).pcow" "Formatting line"
    # Each level writes its own MiB and the first 4 KiB of MiB 0.
    "$HELPER" write "l$i.pcow" $((i * M)) 1M $((0x10 + i))
    "$HELPER" write "l$i.pcow" 0 4K $((0x10 + i))
done
ok "chain l0 <- l1 <- ... <- l7 created"

for k in $(seq 0 7); do
    "$HELPER" verify "l$k.pcow" 0 4K $((0x10 + k))
    "$HELPER" verify "l$k.pcow" 4K $((M - 4096)) 0x10
    for i in $(seq 1 7); do
        if [ "$i" -le "$k" ]; then
            "$HELPER" verify "l$k.pcow" $((i * M)) 1M $((0x10 + i))
        else
            "$HELPER" verify "l$k.pcow" $((i * M)) 1M 0
        fi
    done
    "$HELPER" verify "l$k.pcow" $((8 * M)) 8M 0
done
ok "expected bytes at every level of the chain"

expect 0 "$IMG" info --backing-chain --output=json l7.pcow
equal "$(json_get "$OUT" 'len(d)')" 8 "chain length"
equal "$(json_get "$OUT" 'd[0]["backing-filename"]')" l6.pcow "top base"
equal "$(json_get "$OUT" 'd[0]["backing-filename-format"]')" pcow "fmt"
equal "$(json_get "$OUT" 'd[7]["filename"].endswith("l0.pcow")')" True "bottom"
equal "$(json_get "$OUT" '"backing-filename" in d[7]')" False "bottom base"
equal "$(json_get "$OUT" 'd[0]["virtual-size"]')" 16777216 "size from base"
ok "info --backing-chain --output=json: 8 images"

expect 0 "$IMG" info --backing-chain l7.pcow
equal "$(printf '%s\n' "$OUT" | grep -c '^image: ')" 8 "human chain"
contains "$OUT" "backing file: l6.pcow" "backing file line"
ok "info --backing-chain (human)"

expect 0 "$IMG" map --output=json l7.pcow
equal "$(depth_at "$OUT" 3145728)" 4 \
    "map depth of MiB 3 (written by l3, seen from l7)"
ok "map shows the depth of each extent"

for k in $(seq 0 7); do
    expect 0 "$IMG" check "l$k.pcow"
done
ok "every level checks clean"

# Relative names resolve against the image's own directory.
mkdir -p a b/c
expect 0 "$IMG" create -q a/base.pcow 4M
"$HELPER" write a/base.pcow 0 64K 0x61
expect 0 "$IMG" create -q -b ../../a/base.pcow -F pcow b/c/top.pcow
cd /
"$HELPER" verify "$T/b/c/top.pcow" 0 64K 0x61
expect 0 "$IMG" info --output=json "$T/b/c/top.pcow"
equal "$(json_get "$OUT" 'd["backing-filename"]')" ../../a/base.pcow \
    "stored name"
contains "$(json_get "$OUT" 'd["full-backing-filename"]')" "a/base.pcow" \
    "resolved name"
cd "$T"
ok "backing names are relative to the overlay's directory"

# A raw base, format probed, size from the base.
truncate -s 8M base.raw
put_byte base.raw 1048576 65536 0x72
expect 0 "$IMG" create -b base.raw rawtop.pcow
contains "$OUT" "backing_fmt=raw" "raw probed"
"$HELPER" verify rawtop.pcow 1M 64K 0x72
"$HELPER" write rawtop.pcow 1M 4K 0x73
"$HELPER" verify rawtop.pcow 1M 4K 0x73
"$HELPER" verify rawtop.pcow $((M + 4096)) 60K 0x72
ok "raw base: read through, COW over it"

expect 1 "$IMG" compare base.raw rawtop.pcow
contains "$OUT" "Content mismatch at offset 1048576" "first difference"
ok "compare finds the first difference"

# A larger overlay over a smaller base reads zeros past the base's end.
expect 0 "$IMG" create -q -b l0.pcow -F pcow big.pcow 32M
"$HELPER" verify big.pcow 0 4K 0x10
"$HELPER" verify big.pcow 16M 16M 0
ok "overlay larger than its base"

finish
