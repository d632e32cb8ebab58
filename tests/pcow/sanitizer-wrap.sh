#!/usr/bin/env bash
# sanitizer-wrap.sh CMD...: run a test of a sanitizer build (-Dsanitizers=
# true) with every ASan/UBSan/LeakSanitizer report written to a file, and
# fail when any process of the test wrote one.  A test that expects a
# command to fail (pcow-img refusing bad input, a child that must die)
# would otherwise take a sanitizer's exit status for that failure.
d=$(mktemp -d "${TMPDIR:-/tmp}/pcow-san.XXXXXX") || exit 1
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}log_path=$d/asan"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:+$UBSAN_OPTIONS:}log_path=$d/ubsan"
UBSAN_OPTIONS+=":print_stacktrace=1"
"$@"
rc=$?
if compgen -G "$d/*" >/dev/null; then
    cat "$d"/* >&2
    echo "sanitizer-wrap: sanitizer report(s) above, from: $*" >&2
    rc=1
fi
rm -rf "$d"
exit $rc
