#!/usr/bin/env bash
#
# Install the Debian 12 packages qemu-pcow needs to build, test and run its
# demo.  Idempotent and quick when everything is there: packages already
# installed (dpkg -s) are skipped, and "apt-get update" runs only if
# something is missing and apt cannot find it in its current lists.
# Needs root (or sudo) only when something has to be installed.
#
# This work is licensed under the terms of the GNU GPL, version 2 or later.

set -euo pipefail

packages=(
    # standalone build: libpcow, Image Monitor, pcow-img, tests
    meson ninja-build pkg-config gcc clang libglib2.0-dev libcmocka-dev
    libpmem-dev libndctl-dev
    # the pcow-img(1) manual page: rst2man builds it, groff checks it
    python3-docutils groff-base
    # fetching and patching QEMU 7.2 (./configure)
    make dpkg-dev quilt patch python3 xz-utils
    # QEMU 7.2's lean build
    flex bison python3-venv libpixman-1-dev libfdt-dev libslirp-dev
    zlib1g-dev
    # firmware QEMU loads at run time
    seabios qemu-system-data ipxe-qemu
    # test and demo guests, benchmarks
    busybox-static linux-image-amd64 kmod cpio fio zstd e2fsprogs
    # img-users: what info's scan touches (strace), btrfs subvolumes
    strace btrfs-progs
    # fault injection into QEMU (test-qmp-savevm-full's rollback case)
    gdb
    # confined-host tests (tests/pcow/confine/): apparmor_parser and
    # virt-aa-helper (libvirt-daemon).  Debian's libvirt AppArmor files come
    # from libvirt-daemon-system, which is unpacked, not installed (below).
    apparmor libvirt-daemon
)

say() { echo "install-deps: $*"; }

top=$(cd "$(dirname "$0")/.." && pwd)
# libvirt-daemon-system's AppArmor files (abstractions/libvirt-qemu,
# libvirt/TEMPLATE.qemu) for the confine tests.  Installing the package
# would start a system libvirtd and its default network on a systemd
# host, so unpack it into the build tree instead.
lds_dir=$top/build/deps/libvirt-daemon-system
lds_unpack() {
    local t
    dpkg-query -W -f='${Status}' libvirt-daemon-system 2>/dev/null |
        grep -q 'ok installed' && return 0
    [ -f "$lds_dir/etc/apparmor.d/libvirt/TEMPLATE.qemu" ] && return 0
    say "unpacking libvirt-daemon-system's AppArmor files into $lds_dir"
    t=$(mktemp -d) && chmod 755 "$t" || return 1
    if ! (cd "$t" && apt-get download -q libvirt-daemon-system >/dev/null 2>&1) &&
        ! { "${sudo[@]}" apt-get update -q >/dev/null &&
            (cd "$t" && apt-get download -q libvirt-daemon-system >/dev/null); }; then
        rm -rf "$t"
        say "error: apt-get download libvirt-daemon-system failed" >&2
        return 1
    fi
    rm -rf "$lds_dir.tmp" && mkdir -p "$lds_dir.tmp" &&
        dpkg-deb -x "$t"/libvirt-daemon-system_*.deb "$lds_dir.tmp" &&
        rm -rf "$lds_dir" && mv "$lds_dir.tmp" "$lds_dir"
    local rc=$?
    rm -rf "$t"
    return $rc
}

missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed'; then
        missing+=("$p")
    fi
done

sudo=()
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null &&
    sudo -n true 2>/dev/null; then
    sudo=(sudo -n)
fi

if [ ${#missing[@]} -eq 0 ]; then
    say "all ${#packages[@]} packages installed"
    lds_unpack
    exit
fi
say "missing: ${missing[*]}"

if [ "$(id -u)" != 0 ] && [ ${#sudo[@]} -eq 0 ]; then
    say "error: installing needs root; run as root: apt-get install ${missing[*]}" >&2
    exit 1
fi

# Refresh the package lists unless apt already knows every missing package
# (a fresh container has no lists at all).
need_update=no
for p in "${missing[@]}"; do
    if ! apt-cache show "$p" >/dev/null 2>&1; then
        need_update=yes
        break
    fi
done
if [ $need_update = yes ]; then
    say "apt-get update"
    "${sudo[@]}" apt-get update -q >/dev/null
fi

apt_install() {
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        --no-install-recommends "${missing[@]}" >/dev/null
}
say "apt-get install --no-install-recommends ${missing[*]}"
if ! apt_install; then
    [ $need_update = no ] || exit 1
    # The lists may name versions the mirror no longer has.
    say "apt-get update, then install again"
    "${sudo[@]}" apt-get update -q >/dev/null
    apt_install
fi
lds_unpack
say "done"
