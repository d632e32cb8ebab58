#!/bin/sh
# Regenerate the seed corpus tests/pcow/fuzz/corpus/ with fuzz-gen-corpus
# (built in BUILD, default build/).  The corpus is committed; regression
# inputs found by the fuzzer (regress-*) are kept.
set -e
top=$(cd "$(dirname "$0")/../../.." && pwd)
build=${BUILD:-$top/build}
ninja -C "$build" tests/pcow/fuzz/fuzz-gen-corpus >/dev/null
exec "$build/tests/pcow/fuzz/fuzz-gen-corpus" "$top/tests/pcow/fuzz/corpus"
