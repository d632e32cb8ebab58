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
    # confined-host tests (tests/pcow/confine/): apparmor_parser, Debian's
    # libvirt AppArmor abstractions and TEMPLATE.qemu (libvirt-daemon-system)
    # and virt-aa-helper (libvirt-daemon).  Nothing is started: the tests
    # only parse and generate profiles.
    apparmor libvirt-daemon libvirt-daemon-system
)

say() { echo "install-deps: $*"; }

missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed'; then
        missing+=("$p")
    fi
done

if [ ${#missing[@]} -eq 0 ]; then
    say "all ${#packages[@]} packages installed"
    exit 0
fi
say "missing: ${missing[*]}"

sudo=()
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        sudo=(sudo -n)
    else
        say "error: installing needs root; run as root: apt-get install ${missing[*]}" >&2
        exit 1
    fi
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
say "done"
