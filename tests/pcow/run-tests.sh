#!/usr/bin/env bash
# The whole qemu-pcow test suite.  `make check` builds everything and calls
# this; it runs, in order of dependency:
#   1. the meson suites of the standalone build (unit, crash, img, monitor,
#      kvm) in build/,
#   2. the unit suite again under ASan+UBSan (build-sanitizers/),
#   3. the end-to-end scripts tests/pcow/e2e/test-*.sh against
#      build/qemu-system-x86_64 (Linux guests booted under TCG).
# Exit status 0 = test passed, 77 = skipped (the test says why), else failed.
# The last line is the plain summary "N passed, N failed, N skipped".
set -u
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
build=${BUILD:-build}
only=${PCOW_TESTS:-}        # e.g. PCOW_TESTS="unit img" to run a subset

passed=0; failed=0; skipped=0
failures=()

want() { [ -z "$only" ] || [[ " $only " == *" $1 "* ]]; }

record() {      # record NAME RESULT [why]
    case "$2" in
    pass) passed=$((passed + 1)); printf 'PASS  %s\n' "$1" ;;
    skip) skipped=$((skipped + 1)); printf 'SKIP  %s%s\n' "$1" "${3:+ ($3)}" ;;
    *)    failed=$((failed + 1)); failures+=("$1"); printf 'FAIL  %s\n' "$1" ;;
    esac
}

# Run one meson suite and fold its per-test results into ours.
meson_suite() {     # meson_suite BUILDDIR SUITE [LABEL]
    local dir=$1 suite=$2 label=${3:-$2} log
    meson test -C "$dir" --list 2>/dev/null | grep -q . || return 0
    log=$(mktemp)
    meson test -C "$dir" --suite "$suite" --print-errorlogs \
        --num-processes 2 --logbase "pcow-$label" >"$log" 2>&1
    if [ ! -f "$dir/meson-logs/pcow-$label.json" ]; then
        cat "$log"; rm -f "$log"
        record "$label: meson test" fail
        return
    fi
    # Show failures' logs, then one line per test.
    grep -q -E '^ *[0-9]+/[0-9]+ .* (FAIL|ERROR|TIMEOUT)' "$log" && cat "$log"
    rm -f "$log"
    while IFS=$'\t' read -r name result; do
        case "$result" in
        OK|EXPECTEDFAIL) record "$label: $name" pass ;;
        SKIP) record "$label: $name" skip "see meson-logs/pcow-$label.txt" ;;
        *) record "$label: $name" fail ;;
        esac
    done < <(python3 -c '
import json, sys
for line in open(sys.argv[1]):
    t = json.loads(line)
    print("%s\t%s" % (t["name"], t["result"]))
' "$dir/meson-logs/pcow-$label.json")
}

for suite in unit crash img monitor kvm; do
    want "$suite" && meson_suite "$build" "$suite"
done

if want asan; then
    if [ ! -d build-sanitizers ]; then
        meson setup build-sanitizers -Dsanitizers=true -Dqemu=false \
            >/dev/null 2>&1 || record "asan: meson setup" fail
    fi
    if [ -d build-sanitizers ]; then
        if ninja -C build-sanitizers >/dev/null 2>&1; then
            meson_suite build-sanitizers unit asan-unit
        else
            record "asan: build" fail
        fi
    fi
fi

if want e2e; then
    export QEMU=${QEMU:-$top/$build/qemu-system-x86_64}
    export PCOW_IMG=${PCOW_IMG:-$top/$build/pcow-img}
    for t in tests/pcow/e2e/test-*.sh tests/pcow/libvirt/test-*.sh; do
        [ -e "$t" ] || continue
        name=$(basename "$t" .sh)
        out=$(mktemp)
        timeout 900 bash "$t" >"$out" 2>&1
        rc=$?
        case $rc in
        0) record "e2e: $name" pass ;;
        77) record "e2e: $name" skip "$(tail -n 1 "$out")" ;;
        *) cat "$out"; record "e2e: $name" fail ;;
        esac
        rm -f "$out"
    done
fi

if [ ${#failures[@]} -gt 0 ]; then
    echo "Failed:"
    printf '  %s\n' "${failures[@]}"
fi
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
