#!/usr/bin/env bash
#
# Install qemu-pcow's AppArmor snippet for libvirt-confined QEMUs
# (docs/pcow.rst, "Confined hosts"):
#
#   APPARMOR_DIR/abstractions/qemu-pcow     the rules (tools/apparmor/qemu-pcow.in
#                                           with the install paths filled in)
#   APPARMOR_DIR/local/abstractions/libvirt-qemu
#                                           gains "#include <abstractions/qemu-pcow>"
#                                           (unless --no-local, or it is there)
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

# The rules, with this installation's paths
abs=$destdir$aadir/abstractions
mkdir -p "$abs"
sed -e "s|@BASEDIR@|$basedir|g" -e "s|@BINDIR@|$prefix/bin|g" \
    -e "s|@DATADIR@|$prefix/share|g" \
    "$top/tools/apparmor/qemu-pcow.in" >"$abs/qemu-pcow.tmp"
chmod 0644 "$abs/qemu-pcow.tmp"
mv "$abs/qemu-pcow.tmp" "$abs/qemu-pcow"
say "installed $abs/qemu-pcow"

mkdir -p "$destdir$basedir"
chmod 0755 "$destdir$basedir"
say "base-image directory $destdir$basedir"

if [ $local = yes ]; then
    line='#include <abstractions/qemu-pcow>'
    f=$aadir/local/abstractions/libvirt-qemu
    if [ -f "$f" ] && grep -qxF "$line" "$f"; then
        say "$f already includes abstractions/qemu-pcow"
    else
        mkdir -p "$(dirname "$f")"
        printf '# qemu-pcow: pcow NVDIMMs (docs/pcow.rst, "Confined hosts")\n%s\n' \
            "$line" >>"$f"
        say "added '$line' to $f"
    fi
    say "each domain's profile picks it up at its next start"
else
    say "add '#include <abstractions/qemu-pcow>' to" \
        "$aadir/local/abstractions/libvirt-qemu on the target"
fi
