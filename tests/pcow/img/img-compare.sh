#!/bin/bash
# compare: exit 0 identical, 1 different (first offset printed), 2 error.
. "$(dirname "$0")/common.sh"

truncate -s 16M a.raw
put_random a.raw 123456 5000
expect 0 "$IMG" convert -O pcow a.raw a.pcow
expect 0 "$IMG" compare a.raw a.pcow
contains "$OUT" "Images are identical." "identical"
expect 0 "$IMG" compare -f pcow -F raw a.pcow a.raw
ok "identical raw and pcow"

"$HELPER" write a.pcow 200000 1 0x99
expect 1 "$IMG" compare a.raw a.pcow
contains "$OUT" "Content mismatch at offset 200000!" "first differing offset"
ok "one differing byte: exit 1, offset printed"

expect 0 "$IMG" create -q z1.pcow 16M
expect 0 "$IMG" create -q z2.pcow 32M
expect 0 "$IMG" compare z1.pcow z2.pcow
contains "$OUT" "size mismatch" "size warning"
expect 1 "$IMG" compare -s z1.pcow z2.pcow
"$HELPER" write z2.pcow 20M 4K 0x01
expect 1 "$IMG" compare z1.pcow z2.pcow
contains "$OUT" "offset 20971520" "tail difference"
ok "different sizes: zero tail equal, -s strict, data in the tail differs"

expect 2 "$IMG" compare a.raw nonexistent.pcow
expect_one_line_error "compare nonexistent"
expect 2 "$IMG" compare a.raw
expect 2 "$IMG" compare -f qcow2 a.raw a.pcow
ok "errors: exit 2"

finish
