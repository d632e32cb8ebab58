#!/bin/bash
# pcow-img's command line: --version, --help, unknown commands and options.
. "$(dirname "$0")/common.sh"

expect 0 "$IMG" --version
contains "$OUT" "pcow-img version" "--version"
ok "--version prints the version"

expect 0 "$IMG" --help
for c in create info check snapshot rebase commit convert map measure \
         resize compare; do
    contains "$OUT" "$c" "--help lists $c"
done
ok "--help lists every command"

for c in create info check snapshot rebase commit convert map measure \
         resize compare; do
    expect 0 "$IMG" "$c" --help
    contains "$OUT" "usage: pcow-img $c" "$c --help"
done
ok "every command has --help"

expect_error "$IMG"
ok "no command: one-line error, exit 1"

expect_error "$IMG" frobnicate x.pcow
contains "$ERR" "unknown command 'frobnicate'" "unknown command"
ok "unknown command: one-line error, exit 1"

expect_error "$IMG" --bogus
ok "unknown global option: one-line error, exit 1"

for c in create info check snapshot rebase commit convert map measure \
         resize; do
    expect_error "$IMG" "$c" --no-such-option x.pcow
    contains "$ERR" "--no-such-option" "$c unknown long option"
    expect_error "$IMG" "$c" -Z x.pcow
    contains "$ERR" "-Z" "$c unknown short option"
done
ok "unknown options of every command: one-line error, exit 1"

expect_error "$IMG" info --output
contains "$ERR" "requires an argument" "missing option argument"
ok "missing option argument: one-line error"

expect_error "$IMG" info --output=xml x.pcow
ok "bad --output value"

expect_error "$IMG" info
expect_error "$IMG" info a b
expect_error "$IMG" create
expect_error "$IMG" convert onlyone
expect_error "$IMG" snapshot x.pcow
ok "wrong number of arguments: one-line error, exit 1"

finish
