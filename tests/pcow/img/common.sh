# Shared helpers for the pcow-img CLI tests (sourced, bash).
#
# Environment: PCOW_IMG (the pcow-img binary) and PCOW_IO_HELPER (the test
# helper); both default to the build directory's copies.
#
# Every assertion prints what it checks; the first failure prints the
# reason on stderr and exits 1.

set -e -u -o pipefail

SRCDIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
: "${PCOW_IMG:=$SRCDIR/../../../build/pcow-img}"
: "${PCOW_IO_HELPER:=$SRCDIR/../../../build/tests/pcow/img/pcow-io-helper}"
IMG=$PCOW_IMG
HELPER=$PCOW_IO_HELPER

[ -x "$IMG" ] || { echo "pcow-img not found at $IMG" >&2; exit 1; }

T=$(mktemp -d "${TMPDIR:-/tmp}/pcow-img-test.XXXXXX")
CLEANUP_CMDS=()
cleanup() {
    local c
    for c in "${CLEANUP_CMDS[@]}"; do
        eval "$c" || true
    done
    rm -rf "$T"
}
trap cleanup EXIT
cd "$T"

NCHECKS=0
TEST_NAME=$(basename "$0" .sh)

fail() {
    echo "FAIL [$TEST_NAME]: $*" >&2
    exit 1
}

ok() {
    NCHECKS=$((NCHECKS + 1))
    echo "ok $NCHECKS - $*"
}

# run CMD...: run, capturing stdout in $OUT, stderr in $ERR, status in $RC.
run() {
    set +e
    "$@" >"$T/.out" 2>"$T/.err"
    RC=$?
    set -e
    OUT=$(cat "$T/.out")
    ERR=$(cat "$T/.err")
}

# expect RC CMD...: run and require exit status RC.
expect() {
    local want=$1
    shift
    run "$@"
    if [ "$RC" -ne "$want" ]; then
        fail "expected exit $want, got $RC from: $*
--- stdout:
$OUT
--- stderr:
$ERR"
    fi
}

# expect_error CMD...: exit 1 with exactly one "pcow-img: ..." line on
# stderr.
expect_error() {
    expect 1 "$@"
    expect_one_line_error "$*"
}

expect_one_line_error() {
    local lines
    lines=$(printf '%s\n' "$ERR" | grep -c . || true)
    [ "$lines" -eq 1 ] || fail "expected one error line from: $1
--- stderr:
$ERR"
    case "$ERR" in
    pcow-img:\ *) ;;
    *) fail "error line does not start with 'pcow-img: ': $ERR" ;;
    esac
}

# contains HAYSTACK NEEDLE WHAT
contains() {
    case "$1" in
    *"$2"*) ;;
    *) fail "$3: '$2' not found in:
$1" ;;
    esac
}

not_contains() {
    case "$1" in
    *"$2"*) fail "$3: '$2' unexpectedly found in:
$1" ;;
    *) ;;
    esac
}

# equal A B WHAT
equal() {
    [ "$1" = "$2" ] || fail "$3: got '$1', expected '$2'"
}

# json_get JSON PYTHON-EXPR-ON-d
json_get() {
    python3 -c 'import json,sys; d=json.load(sys.stdin); print('"$2"')' \
        <<<"$1"
}

# Helpers over "map --output=json" output.
# map_ext JSON I: "start length depth data zero" of extent I
map_ext() {
    json_get "$1" '" ".join(str(d['"$2"'][k]) for k in
                   ("start", "length", "depth", "data", "zero"))'
}
# own_data JSON: bytes / extents of data the image holds itself (depth 0)
own_data_bytes() {
    json_get "$1" 'sum(e["length"] for e in d
                       if e["depth"] == 0 and e["data"])'
}
own_data_extents() {
    json_get "$1" 'sum(1 for e in d if e["depth"] == 0 and e["data"])'
}
# depth_at JSON START: depth of the extent starting at START
depth_at() {
    json_get "$1" '[e["depth"] for e in d if e["start"] == '"$2"'][0]'
}

file_size() {
    stat -c %s "$1"
}

disk_usage() {
    echo $(( $(stat -c %b "$1") * $(stat -c %B "$1") ))
}

# Write COUNT bytes of random data at OFFSET into a raw file (no truncation).
put_random() {
    dd if=/dev/urandom of="$1" bs="$3" count=1 seek="$2" \
       oflag=seek_bytes conv=notrunc status=none
}

# Write COUNT bytes of BYTE at OFFSET into a raw file.
put_byte() {
    head -c "$3" /dev/zero | tr '\0' "$(printf '\\%03o' "$4")" |
        dd of="$1" bs=1M seek="$2" oflag=seek_bytes conv=notrunc \
           iflag=fullblock status=none
}

# Background "hold" process that keeps an image open; killed at exit.
hold_image() {
    local fifo="$T/.hold.$$.$RANDOM"
    mkfifo "$fifo"
    "$HELPER" hold "$@" >"$fifo" &
    HOLD_PID=$!
    CLEANUP_CMDS+=("kill $HOLD_PID 2>/dev/null; wait $HOLD_PID 2>/dev/null")
    read -r line <"$fifo" || fail "hold helper did not start"
    rm -f "$fifo"
    case "$line" in
    holding*) ;;
    *) fail "hold helper said: $line" ;;
    esac
}

release_image() {
    kill "$HOLD_PID"
    wait "$HOLD_PID" || fail "hold helper failed to close the image"
}

# hdr FILE ARGS...: read or patch the on-disk header (pcow-hdr.py, written
# from the spec: the current slot is the valid one with the highest
# generation, slot A or B).
hdr() {
    python3 "$SRCDIR/pcow-hdr.py" "$@"
}

# unref_cluster FILE VCLUSTER: clear the active L2 entry of a virtual cluster
# on disk (offline), leaving its data cluster allocated but unreferenced.
unref_cluster() {
    hdr "$1" unref "$2"
}

finish() {
    echo "PASS [$TEST_NAME]: $NCHECKS checks"
}
