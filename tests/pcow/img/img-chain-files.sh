#!/bin/bash
# `pcow-img info` lists every file an image reads ("chain files", JSON
# "chain-files"): the image and each base down the chain, as the absolute
# paths libpcow opened (symlinks resolved), top first -- the set a
# confinement policy must allow (docs/pcow.rst, "Confined hosts").  A chain
# that cannot be opened is reported on that line; info still succeeds.
. "$(dirname "$0")/common.sh"

# chain_json FILE [info options]: the chain-files list, one per line
chain_json() {
    local f=$1
    shift
    expect 0 "$IMG" info --output=json "$@" "$f"
    json_get "$OUT" '"\n".join(d["chain-files"])'
}

expect 0 "$IMG" create -q solo.pcow 16M
expect 0 "$IMG" info solo.pcow
contains "$OUT" "chain files: $T/solo.pcow
" "standalone image"
equal "$(chain_json solo.pcow)" "$T/solo.pcow" "standalone image, JSON"
ok "a standalone image's chain is the image itself"

# top -> (through a symlinked directory, relative name) mid -> raw base
mkdir -p bases vm
truncate -s 16M bases/base.raw
expect 0 "$IMG" create -q -b base.raw -F raw bases/mid.pcow
ln -s bases link
expect 0 "$IMG" create -q -b ../link/mid.pcow -F pcow vm/top.pcow
want="$T/vm/top.pcow
$T/bases/mid.pcow
$T/bases/base.raw"
equal "$(chain_json vm/top.pcow)" "$want" "three-file chain, JSON"
expect 0 "$IMG" info vm/top.pcow
contains "$OUT" "chain files: $T/vm/top.pcow, $T/bases/mid.pcow, $T/bases/base.raw
" "three-file chain"
ok "overlay -> pcow base -> raw base: three absolute paths, top first," \
   "the symlink resolved"

expect 0 "$IMG" info --backing-chain --output=json vm/top.pcow
equal "$(json_get "$OUT" '"|".join(",".join(e.get("chain-files", ["-"]))
                                   for e in d)')" \
      "$T/vm/top.pcow,$T/bases/mid.pcow,$T/bases/base.raw|$T/bases/mid.pcow,$T/bases/base.raw|-" \
      "--backing-chain"
ok "--backing-chain: each pcow layer lists its own chain (raw: none)"

# A writer holds the base (as a running VM holds its image): the chain
# opens only with -U
hold_image bases/mid.pcow
expect 0 "$IMG" info vm/top.pcow
contains "$(grep '^chain files:' <<<"$OUT")" "chain files: unknown (" \
    "base held"
contains "$OUT" "in use" "base held: says why"
equal "$(chain_json vm/top.pcow -U)" "$want" "-U with the base held"
kill "$HOLD_PID"
wait "$HOLD_PID" 2>/dev/null || true
ok "a base held by a writer: the chain is unknown, listed with -U"

mv bases/base.raw bases/gone.raw
expect 0 "$IMG" info vm/top.pcow
line=$(grep '^chain files:' <<<"$OUT")
contains "$line" "chain files: unknown (" "missing base"
contains "$line" "base.raw" "missing base: the message names it"
expect 0 "$IMG" info --output=json vm/top.pcow
equal "$(json_get "$OUT" '"chain-files" in d')" False "missing base, JSON"
ok "a missing base: info succeeds, says the chain is unknown and why"
