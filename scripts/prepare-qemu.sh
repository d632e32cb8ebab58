#!/usr/bin/env bash
#
# Lay out the QEMU work tree that qemu-pcow builds: a copy of the pristine
# QEMU 7.2 tree (see scripts/fetch-qemu.sh), our files copied in at their
# paths, and patches/series applied in order.
#
# Our files: every file of the repository under the QEMU source directories
# listed in $overlay_roots below (include/, block/, backends/, hw/, qapi/),
# e.g. include/pcow/*.h, include/sysemu/hostmem-pcow.h, block/pcow/*,
# backends/pcow-monitor*.c, backends/hostmem-pcow.c, qapi/pcow.json.  They
# must be new files: an upstream file is changed with a patch in patches/,
# never replaced, and this script refuses a file that QEMU already has.
#
# QEMU's meson cannot glob, so this script also writes
# backends/pcow-sources.txt: the C sources QEMU compiles, relative to
# backends/: block/pcow/*.c, backends/pcow-*.c, backends/hostmem-pcow*.c
# and hw/mem/pcow*.c.  patches/0001-backends-build-pcow.patch makes QEMU
# compile what it lists; fs.read() makes meson reconfigure when it changes.
#
# Incremental: only files whose content changed are rewritten, so "make"
# after editing one of our files recompiles just that file.  The overlay
# (our files plus patched upstream files) is rebuilt in a scratch directory
# each run and compared with the work tree; files that left the overlay are
# restored from the pristine tree.  Edits made directly in the work tree
# are overwritten: edit the repository instead.
#
# Usage: scripts/prepare-qemu.sh [--src-dir=build/qemu-src] [--work=build/qemu]
#
# This work is licensed under the terms of the GNU GPL, version 2 or later.

set -euo pipefail
shopt -s nullglob

top=$(cd "$(dirname "$0")/.." && pwd)
src_dir=$top/build/qemu-src
work=$top/build/qemu

for opt; do
    case "$opt" in
    --src-dir=*) src_dir=${opt#*=} ;;
    --work=*) work=${opt#*=} ;;
    -h|--help) sed -n '2,/^$/s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "prepare-qemu: unknown option $opt" >&2; exit 2 ;;
    esac
done

say() { echo "prepare-qemu: $*"; }
die() { echo "prepare-qemu: error: $*" >&2; exit 1; }

[ -f "$src_dir/pristine" ] || die "no QEMU source yet: run ./configure"
pristine=$(cat "$src_dir/pristine")
[ -f "$pristine/VERSION" ] || die "pristine QEMU tree $pristine is missing: run ./configure"
identity="$pristine $(cat "$src_dir/stamp")"

# --- the work tree ----------------------------------------------------------
if [ ! -f "$work/.pcow-pristine" ] || [ "$(cat "$work/.pcow-pristine")" != "$identity" ]; then
    say "copying $pristine to $work"
    rm -rf "$work" "$work.tmp"
    mkdir -p "$work.tmp"
    # -m: fresh mtimes, so that a build directory made from another tree
    # cannot mistake old objects for up to date ones.
    (cd "$pristine" && tar cf - --exclude=./.git .) | (cd "$work.tmp" && tar xmf -)
    : > "$work.tmp/.pcow-overlay"
    echo "$identity" > "$work.tmp/.pcow-pristine"
    mv "$work.tmp" "$work"
fi

# --- the overlay, built from scratch in a staging directory ----------------
stage=$(mktemp -d "$work.stage.XXXXXX")
trap 'rm -rf "$stage"' EXIT

cd "$top"
overlay_roots=(include block backends hw qapi)
ours=()
for d in "${overlay_roots[@]}"; do
    [ -d "$d" ] || continue
    while IFS= read -r -d '' f; do
        ours+=("$f")
    done < <(find "$d" -type f ! -name '*~' ! -name '.*' ! -name '*.orig' \
                  ! -name '*.rej' -print0)
done
for f in "${ours[@]}"; do
    [ ! -e "$pristine/$f" ] ||
        die "$f exists in QEMU: change upstream files with a patch in patches/"
    mkdir -p "$stage/$(dirname "$f")"
    cp "$f" "$stage/$f"
done

mkdir -p "$stage/backends"
for f in block/pcow/*.c backends/pcow-*.c backends/hostmem-pcow*.c hw/mem/pcow*.c; do
    case "$f" in
    backends/*) echo "${f#backends/}" ;;
    *) echo "../$f" ;;
    esac
done > "$stage/backends/pcow-sources.txt"

# patches/series: quilt style, one patch a line, "#" comments, optional -pN.
if [ -f patches/series ]; then
    while read -r name level _; do
        name=${name%%#*}
        [ -n "$name" ] || continue
        p=patches/$name
        [ -f "$p" ] || die "patches/series names $name, which does not exist"
        strip=${level#-p}
        [ -n "$strip" ] || strip=1
        # Seed the staging tree with the pristine version of every file the
        # patch touches (unless one of our files or an earlier patch put it
        # there already).
        while read -r t; do
            if [ ! -e "$stage/$t" ] && [ -f "$pristine/$t" ]; then
                mkdir -p "$stage/$(dirname "$t")"
                cp "$pristine/$t" "$stage/$t"
            fi
        done < <(awk -v n="$strip" '
                     /^(\+\+\+|---) / && $2 != "/dev/null" {
                         p = $2
                         for (i = 0; i < n; i++) sub(/^[^\/]*\//, "", p)
                         print p
                     }' "$p" | sort -u)
        if ! out=$(patch -d "$stage" -p"$strip" -F0 --batch --no-backup-if-mismatch \
                       -r - < "$p" 2>&1); then
            echo "$out" >&2
            die "patch $name does not apply to QEMU $(cat "$pristine/VERSION")"
        fi
    done < patches/series
fi

# --- sync the overlay into the work tree -----------------------------------
cd "$stage"
new_list=$work/.pcow-overlay.new
find . -type f -printf '%P\n' | LC_ALL=C sort > "$new_list"
changed=0
while IFS= read -r f; do
    if ! cmp -s "$f" "$work/$f"; then
        mkdir -p "$work/$(dirname "$f")"
        cp "$f" "$work/$f"
        changed=$((changed + 1))
    fi
done < "$new_list"
# Files that were in the overlay last time but are not now.
while IFS= read -r f; do
    if [ -f "$pristine/$f" ]; then
        cmp -s "$pristine/$f" "$work/$f" || cp "$pristine/$f" "$work/$f"
    else
        rm -f "$work/$f"
    fi
    changed=$((changed + 1))
done < <(LC_ALL=C comm -23 "$work/.pcow-overlay" "$new_list")
mv "$new_list" "$work/.pcow-overlay"

say "$work: $(wc -l < "$work/.pcow-overlay") overlay files ($changed updated), $(grep -c . "$work/backends/pcow-sources.txt" || true) pcow sources"
