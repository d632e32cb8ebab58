#!/bin/bash
# pcow-img(1): the manual page the build makes from docs/pcow-img.rst
# renders without a warning, and names every command that
# "pcow-img --help" lists, in a section of its own, and every option that
# "pcow-img COMMAND --help" shows, in that command's section.  So the page
# cannot drift from the tool.
#
#   img-man-page.sh MANPAGE          (PCOW_IMG: the pcow-img binary)
MAN=$(realpath -- "${1:?usage: img-man-page.sh MANPAGE}")
. "$(dirname "$0")/common.sh"

[ -s "$MAN" ] || fail "manual page '$MAN' missing or empty"
command -v groff >/dev/null ||
    fail "groff not found (scripts/install-deps.sh installs groff-base)"

# Render as man(1) would; -ww shows every warning groff can give.
run groff -man -Tutf8 -ww -z "$MAN"
[ "$RC" -eq 0 ] && [ -z "$ERR" ] ||
    fail "groff -man -Tutf8 -ww: exit $RC, warnings:
$ERR"
ok "groff renders $(basename "$MAN") without warnings"
if command -v man >/dev/null; then
    run env MANWIDTH=80 man -l "$MAN"
    [ "$RC" -eq 0 ] && [ -z "$ERR" ] || fail "man -l: exit $RC: $ERR"
    ok "man -l renders it"
fi

# Plain text for matching: ASCII, no overstrike or escape sequences, no
# hyphenation, long lines (an option never breaks across lines).
TEXT=$T/page.txt
groff -man -Tascii -rHY=0 -rLL=300n -P-cbou "$MAN" >"$TEXT" 2>/dev/null
grep -q '^NAME' "$TEXT" && grep -q '^SYNOPSIS' "$TEXT" &&
    grep -q '^EXIT STATUS' "$TEXT" && grep -q '^EXAMPLES' "$TEXT" &&
    grep -q '^SEE ALSO' "$TEXT" ||
    fail "a section is missing (NAME, SYNOPSIS, EXIT STATUS, EXAMPLES, SEE ALSO)"
ok "NAME, SYNOPSIS, EXIT STATUS, EXAMPLES and SEE ALSO are there"

# The section of command $1: from its heading (3 spaces, the name alone)
# to the next subsection or section heading.
section() {
    awk -v c="$1" '
        $0 == "   " c { on = 1; next }
        on && (/^[^ ]/ || /^   [^ ]/) { exit }
        on { print }' "$TEXT"
}

# Option tokens (-x, --long) of a help text's usage and option lines
options_of() {
    awk '/^usage:/ { u = 1 } u && /^$/ { u = 0 } u || /^ +-/' |
        grep -oE '(^|[][ (|,])--?[A-Za-z][A-Za-z0-9-]*' |
        sed -E 's/^[][ (|,]//' | sort -u
}

run "$IMG" --help
[ "$RC" -eq 0 ] || fail "pcow-img --help: exit $RC"
cmds=$(awk '/^Commands:/ { c = 1; next } c && /^$/ { exit }
            c && /^  [a-z]/ { print $1 }' <<<"$OUT" | sort -u)
[ "$(wc -w <<<"$cmds")" -ge 10 ] ||
    fail "pcow-img --help lists only: $cmds"
synopsis=$(awk '/^SYNOPSIS/ { s = 1; next } s && /^[^ ]/ { exit } s' "$TEXT")
for o in --help --version; do
    grep -qF -- "$o" <<<"$synopsis" || fail "SYNOPSIS lacks $o"
done

nopts=0
for c in $cmds; do
    sec=$(section "$c")
    [ -n "$sec" ] || fail "command '$c' (pcow-img --help) has no section"
    grep -qE "pcow-img $c( |$)" <<<"$sec" ||
        fail "section '$c' has no synopsis 'pcow-img $c ...'"
    run "$IMG" "$c" --help
    [ "$RC" -eq 0 ] || fail "pcow-img $c --help: exit $RC"
    opts=$(options_of <<<"$OUT")
    for o in $opts; do
        [ "$o" = --help ] && continue
        grep -qE -- "(^|[^A-Za-z0-9-])$o([^A-Za-z0-9-]|$)" <<<"$sec" ||
            fail "option $o of 'pcow-img $c --help' is not in section '$c'"
        nopts=$((nopts + 1))
    done
done
ok "all $(wc -w <<<"$cmds") commands of pcow-img --help have a section" \
   "naming each of their $nopts options"
