#!/usr/bin/env bash
#
# Install qemu-pcow's AppArmor snippet for libvirt-confined QEMUs
# (docs/pcow.rst, "Confined hosts"):
#
#   APPARMOR_DIR/abstractions/qemu-pcow     the rules (tools/apparmor/qemu-pcow.in
#                                           with the install paths filled in)
#   APPARMOR_DIR/local/abstractions/libvirt-qemu
#                                           gains "include if exists
#                                           <abstractions/qemu-pcow>" (unless
#                                           --no-local, or it is there)
#   /var/lib/pcow/base                      the base-image directory (0755)
#
# Usage: install-apparmor.sh --prefix PREFIX [--destdir DIR]
#            [--apparmor-dir DIR] [--base-dir DIR] [--no-local]
#
# The local file belongs to the administrator (Debian's libvirt creates it
# empty at install and never overwrites it): we only append our include
# line to it.  With --destdir (staging a package) the local file is not
# written: a package's postinst adds the line.  Without --destdir, nothing
# is done when APPARMOR_DIR does not exist (AppArmor is not installed).
# The local file is included by every libvirt domain's profile, so a rule
# that does not parse would stop every domain from starting: where
# apparmor_parser is installed the abstraction is compiled first, and
# nothing is written when it fails.  "include if exists" keeps the
# profiles valid when the abstraction is removed (uninstall: delete it).
#
# This work is licensed under the terms of the GNU GPL, version 2 or later.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
prefix= destdir= aadir=/etc/apparmor.d basedir=/var/lib/pcow/base local=yes

say() { echo "install-apparmor: $*"; }
die() { echo "install-apparmor: error: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case $1 in
    --prefix) prefix=$2; shift 2 ;;
    --destdir) destdir=$2; shift 2 ;;
    --apparmor-dir) aadir=$2; shift 2 ;;
    --base-dir) basedir=$2; shift 2 ;;
    --no-local) local=no; shift ;;
    *) die "unknown argument '$1'" ;;
    esac
done
[ -n "$prefix" ] || die "--prefix is required"
for d in "$prefix" "$aadir" "$basedir"; do
    case $d in /*) ;; *) die "'$d' is not an absolute path" ;; esac
done

if [ -z "$destdir" ] && [ ! -d "$aadir" ]; then
    say "$aadir does not exist (no AppArmor here): snippet not installed"
    exit 0
fi
if [ -z "$destdir" ] && [ ! -w "$aadir" ]; then
    say "$aadir is not writable: snippet not installed (install as root)"
    exit 0
fi
[ -z "$destdir" ] || local=no

# sed_repl TEXT: TEXT as a sed replacement (no &, | or \ meaning)
sed_repl() { printf '%s' "$1" | sed -e 's/[&|\\]/\\&/g'; }

# check_rules FILE: FILE compiles as the body of a profile (with the
# tunables of this host's AppArmor); true when apparmor_parser is missing
check_rules() {
    local t rc tun=$aadir
    command -v apparmor_parser >/dev/null || return 0
    [ -f "$tun/tunables/global" ] || tun=/etc/apparmor.d
    [ -f "$tun/tunables/global" ] || return 0
    t=$(mktemp) || return 1
    printf '#include <tunables/global>\nprofile qemu-pcow-check {\n' >"$t"
    printf '  #include "%s"\n}\n' "$1" >>"$t"
    apparmor_parser -Q --skip-kernel-load --skip-cache --base "$tun" "$t" \
        >"$t.out" 2>&1
    rc=$?
    grep -m1 'parser error\|syntax error' "$t.out"
    rm -f "$t" "$t.out"
    return $rc
}

# The rules, with this installation's paths
abs=$destdir$aadir/abstractions
mkdir -p "$abs"
sed -e "s|@BASEDIR@|$(sed_repl "$basedir")|g" \
    -e "s|@BINDIR@|$(sed_repl "$prefix/bin")|g" \
    -e "s|@DATADIR@|$(sed_repl "$prefix/share")|g" \
    "$top/tools/apparmor/qemu-pcow.in" >"$abs/qemu-pcow.tmp"
if ! msg=$(check_rules "$abs/qemu-pcow.tmp" 2>&1); then
    rm -f "$abs/qemu-pcow.tmp"
    die "the rules for --prefix '$prefix' do not compile:" \
        "${msg:-apparmor_parser failed}"
fi
chmod 0644 "$abs/qemu-pcow.tmp"
mv "$abs/qemu-pcow.tmp" "$abs/qemu-pcow"
say "installed $abs/qemu-pcow"

mkdir -p "$destdir$basedir"
chmod 0755 "$destdir$basedir"
say "base-image directory $destdir$basedir"

line='include if exists <abstractions/qemu-pcow>'
if [ $local = yes ]; then
    f=$aadir/local/abstractions/libvirt-qemu
    if [ -f "$f" ] && grep -qE \
        '^[[:space:]]*#?include( if exists)? <abstractions/qemu-pcow>' "$f"; then
        say "$f already includes abstractions/qemu-pcow"
    else
        mkdir -p "$(dirname "$f")"
        # The administrator's last line may lack its newline
        if [ -s "$f" ] && [ -n "$(tail -c 1 "$f")" ]; then
            echo >>"$f"
        fi
        printf '# qemu-pcow: pcow NVDIMMs (docs/pcow.rst, "Confined hosts")\n%s\n' \
            "$line" >>"$f"
        say "added '$line' to $f"
    fi
    say "each domain's profile picks it up at its next start"
else
    say "add '$line' to" \
        "$aadir/local/abstractions/libvirt-qemu on the target"
fi
