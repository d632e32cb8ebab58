#!/usr/bin/env bash
# The whole qemu-pcow test suite.  `make check` builds everything and calls
# this; it runs, in order of dependency:
#   0. runner-selftest.sh: this script must report every failure mode,
#   1. the meson suites of the standalone build (unit, crash, fuzz, img,
#      monitor, confine, kvm) in $BUILD (default build/),
#   2. unit, fuzz, img and monitor again under ASan+UBSan in
#      $SAN_BUILD (default build-sanitizers/, set up here when missing),
#   3. the end-to-end scripts tests/pcow/e2e/test-*.sh and
#      tests/pcow/libvirt/test-*.sh against $BUILD/qemu-system-x86_64.
# PCOW_TESTS="unit img ..." runs a subset of the groups selftest, unit,
# crash, fuzz, img, monitor, confine, kvm, asan and e2e.
#
# Exit status of a test: 0 passed, 77 skipped (it says why), else failed.
# With CI=true a skip is a failure, unless the test needs a capability that
# README.md calls optional (OPTIONAL below).  A run that cannot list or run
# a suite, whose `meson test` fails without a failing test (a failed
# rebuild: 125), that runs fewer tests than meson lists, or that runs no
# test at all, fails.  The last line is the plain summary
# "N passed, N failed, N skipped"; the exit status is 0 only without
# failures.
set -u
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
build=${BUILD:-build}
san_build=${SAN_BUILD:-build-sanitizers}
only=${PCOW_TESTS:-}
case ${CI:-} in true|1) ci=1 ;; *) ci= ;; esac

GROUPS_ALL="selftest unit crash fuzz img monitor confine kvm asan e2e"
SUITES="unit crash fuzz img monitor confine kvm"  # every suite meson.build has
SAN_SUITES="unit fuzz img monitor"
# Tests that may skip under CI=true: the capability is optional (README.md)
OPTIONAL=("kvm: kvm-guest")

passed=0; failed=0; skipped=0
failures=()

want() { [ -z "$only" ] || [[ " $only " == *" $1 "* ]]; }

optional() {
    local o
    for o in "${OPTIONAL[@]}"; do
        [ "$o" = "$1" ] && return 0
    done
    return 1
}

record() {      # record NAME RESULT [why]
    local why=${3:-}
    if [ "$2" = skip ] && [ -n "$ci" ] && ! optional "$1"; then
        set -- "$1" fail
        why="skipped, but required under CI=true${why:+: $why}"
    fi
    case "$2" in
    pass) passed=$((passed + 1)); printf 'PASS  %s\n' "$1" ;;
    skip) skipped=$((skipped + 1))
          printf 'SKIP  %s%s\n' "$1" "${why:+ ($why)}" ;;
    *)    failed=$((failed + 1)); failures+=("$1")
          printf 'FAIL  %s%s\n' "$1" "${why:+ ($why)}" ;;
    esac
}

# The suites and test counts of a build directory, "SUITE COUNT" lines
list_suites() {     # list_suites BUILDDIR
    meson introspect "$1" --tests 2>/dev/null | python3 -c '
import collections, json, sys
n = collections.Counter(s.split(":")[-1] for t in json.load(sys.stdin)
                        for s in t["suite"])
for s in sorted(n):
    print(s, n[s])
'
}

# Check that BUILDDIR is a meson build holding exactly the suites we run
check_build_dir() {     # check_build_dir BUILDDIR LABEL WANTED-SUITES...
    local dir=$1 label=$2 s listed
    shift 2
    # Bring meson's view up to date first (meson.build may have changed)
    if [ -f "$dir/build.ninja" ] &&
       ! out=$(ninja -C "$dir" build.ninja 2>&1); then
        tail -n 20 <<<"$out"
        record "$label: build directory '$dir'" fail "meson regenerate failed"
        return 1
    fi
    if [ ! -f "$dir/build.ninja" ] || ! listed=$(list_suites "$dir") ||
       [ -z "$listed" ]; then
        record "$label: build directory '$dir'" fail \
            "not a meson build directory with tests"
        return 1
    fi
    for s in "$@"; do
        grep -q "^$s " <<<"$listed" ||
            record "$label: suite $s" fail "meson in '$dir' lists no such suite"
    done
    for s in $(cut -d' ' -f1 <<<"$listed"); do
        [[ " $SUITES " == *" $s "* ]] ||
            record "$label: suite $s" fail "not run by run-tests.sh"
    done
    SUITE_COUNTS=$listed
}

# Run one meson suite and fold its per-test results into ours.
meson_suite() {     # meson_suite BUILDDIR SUITE LABEL
    local dir=$1 suite=$2 label=$3 log json rc want ran=0 bad=0
    want=$(awk -v s="$suite" '$1 == s { print $2 }' <<<"$SUITE_COUNTS")
    [ -n "$want" ] || return 0          # missing: check_build_dir said so
    json=$dir/meson-logs/pcow-$label.json
    rm -f "$json" "$dir/meson-logs/pcow-$label.txt"
    log=$(mktemp)
    meson test -C "$dir" --suite "$suite" --print-errorlogs \
        --num-processes 2 --logbase "pcow-$label" >"$log" 2>&1
    rc=$?
    if [ ! -s "$json" ]; then
        cat "$log"; rm -f "$log"
        record "$label: meson test" fail "exit $rc, no results"
        return
    fi
    # Show failures' logs, then one line per test.
    grep -q -E '^ *[0-9]+/[0-9]+ .* (FAIL|ERROR|TIMEOUT)' "$log" && cat "$log"
    rm -f "$log"
    while IFS=$'\t' read -r name result why; do
        ran=$((ran + 1))
        case "$result" in
        OK|EXPECTEDFAIL) record "$label: $name" pass ;;
        SKIP) record "$label: $name" skip "$why" ;;
        *) bad=$((bad + 1)); record "$label: $name" fail "$result" ;;
        esac
    done < <(python3 -c '
import json, sys
for line in open(sys.argv[1]):
    t = json.loads(line)
    out = [l for l in (t.get("stdout") or "").splitlines() if l.strip()]
    name = t["name"].split(" / ")[-1]          # without "project:suite / "
    print("%s\t%s\t%s" % (name, t["result"], out[-1] if out else ""))
' "$json")
    if [ "$ran" -lt "$want" ]; then
        record "$label: meson test" fail "$ran of $want tests ran"
    elif [ "$rc" -ne 0 ] && [ "$bad" -eq 0 ]; then
        record "$label: meson test" fail "exit $rc without a failing test"
    fi
}

for g in $only; do
    [[ " $GROUPS_ALL " == *" $g "* ]] ||
        record "PCOW_TESTS: $g" fail "no such group (groups: $GROUPS_ALL)"
done

if want selftest; then
    out=$(mktemp)
    if bash tests/pcow/runner-selftest.sh >"$out" 2>&1; then
        record "runner: selftest" pass
    else
        cat "$out"; record "runner: selftest" fail
    fi
    rm -f "$out"
fi

wanted=()
for suite in $SUITES; do
    want "$suite" && wanted+=("$suite")
done
if [ ${#wanted[@]} -gt 0 ] &&
   check_build_dir "$build" build "${wanted[@]}"; then
    for suite in "${wanted[@]}"; do
        meson_suite "$build" "$suite" "$suite"
    done
fi

if want asan; then
    if [ ! -f "$san_build/build.ninja" ]; then
        out=$(meson setup "$san_build" -Dsanitizers=true -Dqemu=false 2>&1) ||
            { tail -n 20 <<<"$out"; record "asan: meson setup" fail; }
    fi
    if [ -f "$san_build/build.ninja" ]; then
        if ! meson introspect "$san_build" --buildoptions 2>/dev/null |
             python3 -c 'import json, sys; sys.exit(not any(
                 o["name"] == "sanitizers" and o["value"] is True
                 for o in json.load(sys.stdin)))'; then
            record "asan: $san_build" fail \
                "not configured with -Dsanitizers=true"
        elif ! out=$(ninja -C "$san_build" 2>&1); then
            tail -n 30 <<<"$out"; record "asan: build" fail
        elif check_build_dir "$san_build" asan $SAN_SUITES; then
            for suite in $SAN_SUITES; do
                meson_suite "$san_build" "$suite" "asan-$suite"
            done
        fi
    fi
fi

if want e2e; then
    case $build in /*) bdir=$build ;; *) bdir=$top/$build ;; esac
    export QEMU=${QEMU:-$bdir/qemu-system-x86_64}
    export PCOW_IMG=${PCOW_IMG:-$bdir/pcow-img}
    n=0
    for t in tests/pcow/e2e/test-*.sh tests/pcow/libvirt/test-*.sh; do
        [ -e "$t" ] || continue
        n=$((n + 1))
        name=$(basename "$t" .sh)
        out=$(mktemp)
        timeout 900 bash "$t" >"$out" 2>&1
        rc=$?
        case $rc in
        0) record "e2e: $name" pass ;;
        77) [ -n "$ci" ] && cat "$out"
            record "e2e: $name" skip "$(tail -n 1 "$out")" ;;
        *) cat "$out"; record "e2e: $name" fail "exit $rc" ;;
        esac
        rm -f "$out"
    done
    [ "$n" -gt 0 ] || record "e2e" fail "no tests/pcow/e2e/test-*.sh found"
fi

[ $((passed + failed + skipped)) -gt 0 ] || record "run-tests.sh" fail \
    "no test ran"
if [ ${#failures[@]} -gt 0 ]; then
    echo "Failed:"
    printf '  %s\n' "${failures[@]}"
fi
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
