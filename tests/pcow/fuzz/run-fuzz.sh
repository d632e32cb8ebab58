#!/bin/sh
# Run the pcow open+check fuzz target for MINUTES minutes (default 10) under
# ASan+UBSan.  Builds build-fuzz/ with clang on first use:
#   CC=clang meson setup build-fuzz -Dfuzz=true -Dsanitizers=true
# New inputs go to build-fuzz/fuzz-corpus (the committed seed corpus,
# tests/pcow/fuzz/corpus/, is only read); a crashing input is written as
# tests/pcow/fuzz/crash-* (git-ignored): minimise it with
#   build-fuzz/tests/pcow/fuzz/fuzz-open -minimize_crash=1 -runs=10000 FILE
# and, once fixed, add it to the corpus as regress-NAME.
set -eu
minutes=${1:-10}
case $minutes in
''|*[!0-9]*) echo "usage: $0 MINUTES" >&2; exit 2 ;;
esac
top=$(cd "$(dirname "$0")/../../.." && pwd)
cd "$top"
if [ ! -f build-fuzz/build.ninja ]; then
    CC=clang meson setup build-fuzz -Dfuzz=true -Dsanitizers=true
fi
ninja -C build-fuzz tests/pcow/fuzz/fuzz-open
mkdir -p build-fuzz/fuzz-corpus
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
exec build-fuzz/tests/pcow/fuzz/fuzz-open \
    -max_total_time=$((minutes * 60)) -max_len=131072 -timeout=60 \
    -rss_limit_mb=4096 -print_final_stats=1 -print_pcs=0 \
    -artifact_prefix=tests/pcow/fuzz/ \
    build-fuzz/fuzz-corpus tests/pcow/fuzz/corpus
