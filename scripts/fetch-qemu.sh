#!/usr/bin/env bash
#
# Obtain a pristine QEMU 7.2 source tree for qemu-pcow.
#
# Default: Debian bookworm's "qemu" source package, fetched with
# "apt-get source" through a PRIVATE apt configuration under
# $QEMU_SRC_DIR/apt (own sources list, lists, cache).  The deb-src entries
# are derived from the Debian entries of the system's apt sources (same
# URIs, suites, components and Signed-By keys).  The system's apt
# configuration and state are never modified; apt verifies the Release
# signatures and the file hashes as usual.  "dpkg-source -x" unpacks the
# package and applies Debian's patch queue.
#
# With --qemu-source=DIR an existing QEMU 7.2 tree is used instead (it is
# only read, never modified).
#
# The result is recorded in $QEMU_SRC_DIR/pristine (a path) and
# $QEMU_SRC_DIR/stamp (what it is); a second run with the same arguments
# does nothing.
#
# Usage: scripts/fetch-qemu.sh [--qemu-source=DIR] [--src-dir=DIR]
#
# This work is licensed under the terms of the GNU GPL, version 2 or later.

set -euo pipefail

QEMU_SERIES=7.2
qemu_source=
src_dir=build/qemu-src

for opt; do
    case "$opt" in
    --qemu-source=*) qemu_source=${opt#*=} ;;
    --src-dir=*) src_dir=${opt#*=} ;;
    -h|--help) sed -n '2,/^$/s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "fetch-qemu: unknown option $opt" >&2; exit 2 ;;
    esac
done

say() { echo "fetch-qemu: $*"; }
die() { echo "fetch-qemu: error: $*" >&2; exit 1; }

mkdir -p "$src_dir"
src_dir=$(cd "$src_dir" && pwd)

check_version() {
    local dir=$1 v
    [ -f "$dir/VERSION" ] || die "$dir is not a QEMU source tree (no VERSION)"
    v=$(cat "$dir/VERSION")
    case "$v" in
    "$QEMU_SERIES".*) ;;
    *) die "$dir is QEMU $v; qemu-pcow needs QEMU $QEMU_SERIES.x" ;;
    esac
}

# --- an existing tree -------------------------------------------------------
if [ -n "$qemu_source" ]; then
    [ -d "$qemu_source" ] || die "--qemu-source: $qemu_source is not a directory"
    qemu_source=$(cd "$qemu_source" && pwd)
    check_version "$qemu_source"
    echo "$qemu_source" > "$src_dir/pristine"
    echo "dir $qemu_source $(cat "$qemu_source/VERSION")" > "$src_dir/stamp"
    say "using QEMU $(cat "$qemu_source/VERSION") from $qemu_source"
    exit 0
fi

# --- cached Debian source ---------------------------------------------------
if [ -f "$src_dir/stamp" ] && [ -d "$src_dir/orig" ] &&
   grep -q '^debian ' "$src_dir/stamp"; then
    echo "$src_dir/orig" > "$src_dir/pristine"
    say "using cached $(cut -d' ' -f2- "$src_dir/stamp") in $src_dir/orig"
    exit 0
fi

command -v apt-get >/dev/null || die "apt-get not found; use --qemu-source=DIR"
command -v dpkg-source >/dev/null ||
    die "dpkg-source not found (apt-get install dpkg-dev, or scripts/install-deps.sh)"

# --- private apt configuration ----------------------------------------------
apt_dir=$src_dir/apt
rm -rf "$apt_dir"
mkdir -p "$apt_dir/sources.list.d" "$apt_dir/lists/partial" \
         "$apt_dir/cache/archives/partial" "$apt_dir/download"

# One-line style (/etc/apt/sources.list, *.list): "deb [opts] uri suite comps"
# becomes "deb-src [opts] uri suite comps" for Debian archive URIs.
: > "$apt_dir/sources.list"
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk '$1 == "deb" && /debian/ { $1 = "deb-src"; print }' "$f" \
        >> "$apt_dir/sources.list"
done

# deb822 style (*.sources): copy each enabled stanza with "Types: deb" whose
# URIs name a Debian archive, with Types replaced by deb-src.  Every other
# field (Suites, Components, Signed-By, even an inline key) stays as is.
for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk '
        function flush() {
            if (n && types ~ /(^|[ \t])deb([ \t]|$)/ && uris ~ /debian/ &&
                tolower(enabled) != "no") {
                for (i = 1; i <= n; i++) {
                    print (lines[i] ~ /^Types:/ ? "Types: deb-src" : lines[i])
                }
                print ""
            }
            n = 0; types = ""; uris = ""; enabled = ""
        }
        /^#/ { next }
        /^[ \t]*$/ { flush(); next }
        {
            lines[++n] = $0
            if ($1 == "Types:") { types = $0; sub(/^Types:/, "", types) }
            if ($1 == "URIs:") uris = $0
            if ($1 == "Enabled:") enabled = $2
        }
        END { flush() }
    ' "$f" > "$apt_dir/sources.list.d/$(basename "$f")"
done

if ! grep -qs . "$apt_dir/sources.list" "$apt_dir"/sources.list.d/*.sources; then
    die "no Debian archive found in the system's apt sources; use --qemu-source=DIR"
fi

apt_opts=(
    -o "Dir::Etc::SourceList=$apt_dir/sources.list"
    -o "Dir::Etc::SourceParts=$apt_dir/sources.list.d"
    -o "Dir::State::Lists=$apt_dir/lists"
    -o "Dir::Cache=$apt_dir/cache"
    -o "Dir::Cache::pkgcache=$apt_dir/cache/pkgcache.bin"
    -o "Dir::Cache::srcpkgcache=$apt_dir/cache/srcpkgcache.bin"
    -o "Acquire::Languages=none"
)

# As root, apt downloads as the unprivileged _apt user: let it write there.
if [ "$(id -u)" = 0 ] && id _apt >/dev/null 2>&1; then
    chown _apt "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" \
               "$apt_dir/download"
fi

say "apt-get update (private lists in $apt_dir)"
apt-get "${apt_opts[@]}" -q update > "$apt_dir/update.log" 2>&1 ||
    { cat "$apt_dir/update.log" >&2; die "apt-get update of the deb-src lists failed"; }

# Highest available $QEMU_SERIES version of the qemu source package.
version=$(apt-cache "${apt_opts[@]}" showsrc qemu 2>/dev/null |
          awk -v s="1:$QEMU_SERIES" '$1 == "Version:" && index($2, s) == 1 { print $2 }' |
          sort -u | {
              best=
              while read -r v; do
                  if [ -z "$best" ] || dpkg --compare-versions "$v" gt "$best"; then
                      best=$v
                  fi
              done
              echo "$best"
          })
[ -n "$version" ] ||
    die "no qemu $QEMU_SERIES source package in the Debian archive (need bookworm); use --qemu-source=DIR"

say "apt-get source qemu=$version"
(cd "$apt_dir/download" &&
 apt-get "${apt_opts[@]}" -q --download-only source "qemu=$version") \
    > "$apt_dir/source.log" 2>&1 ||
    { cat "$apt_dir/source.log" >&2; die "apt-get source qemu=$version failed"; }

dsc=$(ls "$apt_dir"/download/qemu_*.dsc)
say "dpkg-source -x $(basename "$dsc") (applies Debian's patches)"
rm -rf "$src_dir/orig" "$src_dir/orig.tmp"
dpkg-source -q -x "$dsc" "$src_dir/orig.tmp" > "$apt_dir/dpkg-source.log" 2>&1 ||
    { cat "$apt_dir/dpkg-source.log" >&2; die "dpkg-source -x failed"; }
check_version "$src_dir/orig.tmp"
mv "$src_dir/orig.tmp" "$src_dir/orig"

# Keep the downloaded files (small) so the tree can be re-extracted, drop
# the index files (large, useless after this).
rm -rf "$apt_dir/lists" "$apt_dir/cache"
echo "$src_dir/orig" > "$src_dir/pristine"
echo "debian qemu $version" > "$src_dir/stamp"
say "QEMU $(cat "$src_dir/orig/VERSION") (Debian $version) in $src_dir/orig"
