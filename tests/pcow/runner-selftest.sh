#!/usr/bin/env bash
# Self-test of run-tests.sh: in a throwaway tree that has the runner, a tiny
# meson project with the same suites and a fake e2e script, fake each way a
# run could pass falsely and check that the runner reports a failure:
# a failed rebuild over a previous run's results, a wrong build directory,
# a suite that vanished, a required skip under CI=true (meson and e2e), an
# unknown PCOW_TESTS group; and that good runs and optional skips still
# pass.  Each failure must be the specific one: its exact FAIL line (test
# or suite name and reason), the "Failed:" list, the exact final counts
# and exit status 1.  run-tests.sh runs it first (group "selftest").
#
#   RUNNER=path/to/run-tests.sh tests/pcow/runner-selftest.sh
#
# tests another copy of the runner (default: the one beside this script).
# Exit 0 when every check holds, 1 otherwise.
set -u
here=$(cd "$(dirname "$0")" && pwd)
runner=${RUNNER:-$here/run-tests.sh}
T=$(mktemp -d "${TMPDIR:-/tmp}/pcow-runner-selftest.XXXXXX") || exit 1
trap 'rm -rf "$T"' EXIT
nfail=0; n=0

# The fake tree: project root $T/src, runner at tests/pcow/run-tests.sh
src=$T/src
mkdir -p "$src/tests/pcow/e2e"
cp "$runner" "$src/tests/pcow/run-tests.sh"
printf '#!/bin/sh\nexit 0\n' >"$src/tests/pcow/runner-selftest.sh"
cat >"$src/fake-test.sh" <<'EOF'
#!/bin/sh
# fake-test.sh NAME: exit with the status in results/NAME (default 0)
rc=$(cat "$(dirname "$0")/results/$1" 2>/dev/null || echo 0)
[ "$rc" = 77 ] && echo "SKIP: fake reason"
exit "$rc"
EOF
chmod +x "$src/fake-test.sh"
mkdir "$src/results"
cat >"$src/tests/pcow/e2e/test-fake.sh" <<'EOF'
rc=$(cat "$(dirname "$0")/../../../results/e2e" 2>/dev/null || echo 0)
[ "$rc" = 77 ] && echo "SKIP: fake e2e reason"
exit "$rc"
EOF
cat >"$src/meson_options.txt" <<'EOF'
option('sanitizers', type: 'boolean', value: false)
option('qemu', type: 'boolean', value: true)
option('omit', type: 'string', value: '')
EOF
cat >"$src/meson.build" <<'EOF'
project('fake', 'c')
executable('prog', 'prog.c')
fake = find_program('fake-test.sh')
foreach s : ['unit', 'crash', 'fuzz', 'img', 'monitor', 'confine', 'kvm']
  if s != get_option('omit')
    name = s == 'kvm' ? 'kvm-guest' : s + '-a'
    test(name, fake, args: [name], suite: s)
  endif
endforeach
test('unit-b', fake, args: ['unit-b'], suite: 'unit')   # extra
EOF
echo 'int main(void) { return 0; }' >"$src/prog.c"

# check WHAT SUMMARY FAILS [VAR=VALUE...]: run the runner; its last line
# must be exactly SUMMARY ("N passed, N failed, N skipped"), its FAIL lines
# exactly FAILS (newline-separated, without the "FAIL  " prefix; empty for
# none), its "Failed:" list the names of those lines, and its exit status
# 0 without failures, else 1.  So a failure must be the right one: a run
# that fails for another reason, names another test or suite, or counts
# wrong does not pass the check.
check() {
    local what=$1 summary=$2 fails=$3 rc last got want_rc=0 names
    shift 3
    n=$((n + 1))
    # Only what the check sets: none of the caller's BUILD, CI, ...
    (cd "$src" && env BUILD=build SAN_BUILD=build-sanitizers CI= \
        PCOW_TESTS= QEMU="$src/no-qemu" PCOW_IMG="$src/no-pcow-img" "$@" \
        bash tests/pcow/run-tests.sh) >"$T/out" 2>&1
    rc=$?
    last=$(tail -n 1 "$T/out")
    [[ "$summary" == *" 0 failed,"* ]] || want_rc=1
    got=$(sed -n 's/^FAIL  //p' "$T/out")
    # The runner lists each failure's name (the FAIL line up to " (why)")
    names=$(sed -n 's/^FAIL  \([^(]*[^ (]\)\( (.*)\)\{0,1\}$/  \1/p' \
            "$T/out")
    if [ "$last" != "$summary" ]; then
        bad "$what: last line '$last', expected '$summary'"
    elif [ "$rc" -ne "$want_rc" ]; then
        bad "$what: exit $rc, expected $want_rc"
    elif [ "$got" != "$fails" ]; then
        bad "$what: FAIL lines differ, expected:" "$fails"
    elif [ -n "$fails" ] &&
         [ "$(sed -n '/^Failed:$/,/^[0-9]/p' "$T/out" | sed '1d;$d')" != \
           "$names" ]; then
        bad "$what: the Failed: list does not name the failures"
    else
        echo "ok $n - $what: $last (exit $rc)"
        return 0
    fi
    return 1
}

bad() {     # bad WHY [EXPECTED]
    nfail=$((nfail + 1))
    echo "not ok $n - $1"
    [ $# -lt 2 ] || sed 's/^/    + /' <<<"$2"
    sed 's/^/    | /' "$T/out"
}

# no_line PATTERN WHAT: the last run printed no line matching PATTERN
no_line() {
    if grep -q -E "$1" "$T/out"; then
        bad "$2"
    fi
}

all="unit crash fuzz img monitor confine kvm"
meson setup "$src/build" "$src" >"$T/setup.log" 2>&1 ||
    { cat "$T/setup.log"; echo "cannot set up the fake project"; exit 1; }

check "all suites pass" "8 passed, 0 failed, 0 skipped" "" PCOW_TESTS="$all"
echo 1 >"$src/results/unit-a"
check "a failing test" "1 passed, 1 failed, 0 skipped" \
    "unit: unit-a (FAIL)" PCOW_TESTS=unit
rm "$src/results/unit-a"

# A passing run leaves its JSON log; then the rebuild fails (exit 125)
check "before the broken rebuild" "2 passed, 0 failed, 0 skipped" "" \
    PCOW_TESTS=unit
echo 'this is not C' >"$src/prog.c"
if check "failed rebuild, stale results" "0 passed, 1 failed, 0 skipped" \
    "unit: meson test (exit 125, no results)" PCOW_TESTS=unit; then
    no_line '^PASS' "failed rebuild: a PASS line was printed"
fi
echo 'int main(void) { return 0; }' >"$src/prog.c"

# meson.build loses a test after the last meson setup
sed -i '/# extra$/d' "$src/meson.build"
check "meson.build changed since setup" "1 passed, 0 failed, 0 skipped" "" \
    PCOW_TESTS=unit

nobuild="not a meson build directory with tests"
check "build directory missing" "0 passed, 1 failed, 0 skipped" \
    "build: build directory 'no-such-dir' ($nobuild)" \
    PCOW_TESTS="$all" BUILD=no-such-dir
mkdir "$src/empty"
check "build directory not a meson build" "0 passed, 1 failed, 0 skipped" \
    "build: build directory 'empty' ($nobuild)" PCOW_TESTS="$all" BUILD=empty
mkdir "$T/other"
echo "project('other', 'c')" >"$T/other/meson.build"
meson setup "$src/build-other" "$T/other" >"$T/setup.log" 2>&1 ||
    { cat "$T/setup.log"; echo "cannot set up the fake project"; exit 1; }
check "build directory of a project without tests" \
    "0 passed, 1 failed, 0 skipped" \
    "build: build directory 'build-other' ($nobuild)" \
    PCOW_TESTS="$all" BUILD=build-other
mkdir "$T/nomeson"
printf '#!/bin/sh\necho "meson: not found" >&2\nexit 127\n' >"$T/nomeson/meson"
chmod +x "$T/nomeson/meson"
check "meson missing" "0 passed, 1 failed, 0 skipped" \
    "build: build directory 'build' ($nobuild)" \
    PCOW_TESTS="$all" PATH="$T/nomeson:$PATH"
check "no PCOW_TESTS group matches" "0 passed, 1 failed, 0 skipped" \
    "PCOW_TESTS: nosuch (no such group (groups: selftest unit crash fuzz img \
monitor confine kvm asan e2e))" PCOW_TESTS=nosuch

meson setup "$src/build-omit" "$src" -Domit=img >"$T/setup.log" 2>&1 ||
    { cat "$T/setup.log"; echo "cannot set up the fake project"; exit 1; }
# The other six suites still run (unit-b is gone): only img is reported
check "suite img vanished" "6 passed, 1 failed, 0 skipped" \
    "build: suite img (meson in 'build-omit' lists no such suite)" \
    PCOW_TESTS="$all" BUILD=build-omit
check "suite img vanished (only img wanted)" "0 passed, 1 failed, 0 skipped" \
    "build: suite img (meson in 'build-omit' lists no such suite)" \
    PCOW_TESTS=img BUILD=build-omit

echo 77 >"$src/results/unit-a"
check "required skip, no CI" "0 passed, 0 failed, 1 skipped" "" \
    PCOW_TESTS=unit CI=
check "required skip under CI=true" "0 passed, 1 failed, 0 skipped" \
    "unit: unit-a (skipped, but required under CI=true: SKIP: fake reason)" \
    PCOW_TESTS=unit CI=true
rm "$src/results/unit-a"
echo 77 >"$src/results/kvm-guest"
check "optional skip (KVM) under CI=true" "0 passed, 0 failed, 1 skipped" "" \
    PCOW_TESTS=kvm CI=true
rm "$src/results/kvm-guest"

check "e2e pass" "1 passed, 0 failed, 0 skipped" "" PCOW_TESTS=e2e
echo 77 >"$src/results/e2e"
check "e2e skip, no CI" "0 passed, 0 failed, 1 skipped" "" PCOW_TESTS=e2e CI=
check "e2e skip under CI=true" "0 passed, 1 failed, 0 skipped" \
    "e2e: test-fake (skipped, but required under CI=true: SKIP: fake e2e \
reason)" PCOW_TESTS=e2e CI=true
echo 1 >"$src/results/e2e"
check "e2e failure" "0 passed, 1 failed, 0 skipped" \
    "e2e: test-fake (exit 1)" PCOW_TESTS=e2e
rm "$src/results/e2e"

check "sanitizer build set up and run" "4 passed, 0 failed, 0 skipped" "" \
    PCOW_TESTS=asan
meson setup "$src/build-plain" "$src" >"$T/setup.log" 2>&1 ||
    { cat "$T/setup.log"; echo "cannot set up the fake project"; exit 1; }
check "sanitizer dir without sanitizers" "0 passed, 1 failed, 0 skipped" \
    "asan: build-plain (not configured with -Dsanitizers=true)" \
    PCOW_TESTS=asan SAN_BUILD=build-plain

# sanitizer-wrap.sh: a report behind an exit status the test expected
n=$((n + 1))
printf '#include <stdlib.h>\nint main(int c, char **v)\n{ char *p = malloc(4);'\
' p[c + 4] = 1; return 1; }\n' >"$T/overflow.c"
if ! cc -fsanitize=address,undefined -o "$T/overflow" "$T/overflow.c" \
        >"$T/out" 2>&1; then
    bad "sanitizer-wrap: cannot build a sanitizer program"
elif bash "$here/sanitizer-wrap.sh" sh -c "'$T/overflow' || true" \
        >"$T/out" 2>&1; then
    bad "sanitizer-wrap: a hidden heap overflow passed"
elif ! grep -q 'heap-buffer-overflow' "$T/out"; then
    bad "sanitizer-wrap: failed, but without the report"
else
    echo "ok $n - sanitizer-wrap: a report behind an expected failure fails"
fi

echo "$((n - nfail)) of $n runner checks passed"
[ $nfail -eq 0 ]
