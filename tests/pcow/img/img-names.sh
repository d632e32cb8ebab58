#!/bin/bash
# Hostile names: snapshot and backing file names that are not UTF-8 or hold
# control characters.  --output=json stays valid JSON (controls as \uXXXX,
# each non-UTF-8 byte as U+FFFD); human output and errors print them as
# \xHH, so no control byte reaches the terminal and every line stays one.
. "$(dirname "$0")/common.sh"

# check_json FILE: strict UTF-8 JSON (json.loads of the bytes; json.load
# of text too); prints nothing, fails the test otherwise.
check_json() {
    python3 -c 'import json,sys; json.loads(open(sys.argv[1], "rb").read())' \
        "$1" || fail "$1 is not valid UTF-8 JSON"
    python3 -c 'import json,sys; json.load(sys.stdin)' <"$1" ||
        fail "$1: json.load failed"
}

# no_controls FILE: no byte below 0x20 but newline, no DEL, no U+0080..9F
no_controls() {
    python3 - "$1" <<'PY' || fail "$1 holds raw control characters"
import sys
b = open(sys.argv[1], "rb").read()
bad = [i for i, c in enumerate(b) if (c < 0x20 and c != 0x0a) or c == 0x7f]
t = b.decode("utf-8", "replace")
bad += [i for i, c in enumerate(t) if 0x80 <= ord(c) < 0xa0]
if bad:
    sys.exit("control byte at %d: %r" % (bad[0], b[max(0, bad[0] - 8):
                                                 bad[0] + 8]))
PY
}

NAMES=(
    $'bad\xff\xfename'
    $'ctl\x1b[31mred\x07'
    $'two\nlines'
    $'tab\tq"uote\\'
    $'c1\xc2\x9b2J'
    'café ✓'
)
# What json.loads must give back for each (U+FFFD for the bad bytes)
WANT=(
    'bad\ufffd\ufffdname'
    'ctl\x1b[31mred\x07'
    'two\nlines'
    'tab\tq"uote\\'
    'c1\u009b2J'
    'caf\u00e9 \u2713'
)

expect 0 "$IMG" create -q s.pcow 16M
# New names with control characters are refused (issue 16 item 4): one
# line, non-zero exit, nothing created
for n in $'ctl\x1b[31mred' $'two\nlines' $'tab\tname' $'del\x7f'; do
    expect_error "$IMG" snapshot -c "$n" s.pcow
    contains "$ERR" "control characters" "snapshot -c refuses ${n@Q}"
done
equal "$("$IMG" snapshot -l s.pcow)" "" "no snapshot was created"
expect 0 "$IMG" snapshot -c 'café ✓' s.pcow
expect 0 "$IMG" snapshot -d 'café ✓' s.pcow
ok "snapshot -c refuses control characters in new names, one line each"

# Images made elsewhere may hold any name: the helper bypasses the rule
for n in "${NAMES[@]}"; do
    expect 0 "$HELPER" snapshot-any s.pcow "$n"
done
ok "snapshots with hostile names created"

"$IMG" info --output=json s.pcow >info.json
check_json info.json
for k in "${!NAMES[@]}"; do
    python3 - info.json "$k" "${WANT[$k]}" <<'PY' || fail "name $k"
import json, sys
d = json.loads(open(sys.argv[1], "rb").read())
k, want = int(sys.argv[2]), sys.argv[3].encode().decode("unicode_escape")
got = d["snapshots"][k]["name"]
if got != want:
    sys.exit("snapshot %d: %r, expected %r" % (k, got, want))
PY
done
ok "info --output=json: valid JSON, names exact (non-UTF-8 bytes: U+FFFD)"

"$IMG" snapshot -l s.pcow >list.txt
no_controls list.txt
equal "$(wc -l <list.txt)" $((2 + ${#NAMES[@]})) "one line per snapshot"
grep -qF 'bad\xff\xfename' list.txt || fail "non-UTF-8 bytes not as \\xHH"
grep -qF 'ctl\x1b[31mred\x07' list.txt || fail "controls not as \\xHH"
grep -qF 'two\x0alines' list.txt || fail "newline not as \\x0a"
grep -qF 'c1\xc2\x9b2J' list.txt || fail "C1 control not as \\xHH"
grep -qF 'café ✓' list.txt || fail "valid UTF-8 not kept"
"$IMG" info s.pcow >info.txt
no_controls info.txt
grep -qF 'ctl\x1b[31mred\x07' info.txt || fail "info: controls not escaped"
ok "snapshot -l and info: controls and bad bytes as \\xHH, one line each"

expect_error "$IMG" snapshot -a $'no\x1b[2Jsuch\nname' s.pcow
contains "$ERR" 'no\x1b[2Jsuch\x0aname' "error names it escaped"
ok "an error naming a hostile name is one escaped line"

# Backing files whose names hold control characters / are not UTF-8
B1=$'base\x1b]0;title\x07.raw'
B2=$'b\xff\xfe.raw'
truncate -s 1M "$B1" "$B2"
expect 0 "$IMG" create -q -b "$B1" -F raw o1.pcow
expect 0 "$IMG" create -q -b "$B2" -F raw o2.pcow
for o in o1 o2; do
    "$IMG" info --output=json --backing-chain $o.pcow >$o.json
    check_json $o.json
    "$IMG" info --backing-chain $o.pcow >$o.txt
    no_controls $o.txt
    "$IMG" map $o.pcow >$o.map
    no_controls $o.map
done
python3 - o1.json o2.json <<'PY' || fail "backing names in JSON"
import json, sys
d1 = json.loads(open(sys.argv[1], "rb").read())[0]
d2 = json.loads(open(sys.argv[2], "rb").read())[0]
assert d1["backing-filename"] == "base\x1b]0;title\x07.raw", d1
assert d2["backing-filename"] == "b\ufffd\ufffd.raw", d2
assert d2["full-backing-filename"].endswith("/b\ufffd\ufffd.raw"), d2
PY
grep -qF 'backing file: base\x1b]0;title\x07.raw' o1.txt ||
    fail "human backing name not escaped"
grep -qF 'backing file: b\xff\xfe.raw' o2.txt ||
    fail "human backing name not escaped"
ok "backing names: valid JSON, escaped in info and map"

finish
