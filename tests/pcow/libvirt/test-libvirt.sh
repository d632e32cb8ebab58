#!/usr/bin/env bash
# End-to-end test: a real libvirt 9.0 daemon (Debian 12's monolithic
# libvirtd) boots a Linux guest under TCG whose NVDIMM is a pcow image given
# through libvirt's *native* device XML
#
#     <memory model='nvdimm' access='shared'>
#       <source><path>/.../nv.pcow</path></source>
#       <target><size unit='KiB'>...</size><node>0</node></target>
#     </memory>
#
# (no <qemu:commandline>).  libvirt turns that into
#     -object '{"qom-type":"memory-backend-file",...,"mem-path":"/.../nv.pcow",
#               "share":true,"prealloc":true,"size":N}'
# and QEMU picks the pcow format because the file name ends in ".pcow".
#
# Cases (each one guest boot unless noted):
#   root        QEMU runs as root (qemu.conf user = "root"); fresh thin image.
#   qemu-user   QEMU runs as libvirt-qemu, the image is an overlay of a base
#               image in the base directory /var/lib/pcow/base (the one the
#               AppArmor snippet and the SELinux recipe of docs/pcow.rst,
#               "Confined hosts", allow; root-owned, world-readable:
#               libvirt's DAC driver only relabels the top image); the guest
#               checks it reads the base's data, writes next to it and
#               elsewhere.
#   raw         control: a raw file named *.img behaves as upstream QEMU's.
#   snapshot    a qcow2 disk and a pcow NVDIMM, libvirt internal snapshots
#               of the running domain (issue 10): the guest writes A,
#               virsh snapshot-create-as s1, writes B, virsh
#               snapshot-revert s1, and checks it reads A again (B gone);
#               the pcow image holds s1 until virsh snapshot-delete.  The
#               guest takes commands on its second serial port (a unix
#               socket), so it runs on across the snapshot and the revert.
#   snapshot-nodisk  the same without the qcow2 disk: the pcow image holds
#               the VM state with s1 (pcow-img snapshot -l shows its size).
#               libvirt 9.0 refuses an internal snapshot of a domain without
#               a disk, so HMP savevm/loadvm/delvm go through virsh
#               qemu-monitor-command (the recipe of docs/pcow.rst).
#   saverestore a pcow NVDIMM across virsh save/restore and managedsave
#               (issue 10): the state file holds no NVDIMM page, the guest
#               runs on and reads its data after each restore; a restore
#               onto an image changed since the save is refused, naming it.
#   migrate     virsh migrate --live --persistent --undefinesource between
#               two daemons that look like two hosts (a UTS namespace and a
#               host_uuid each: libvirt refuses a migration between equal
#               host UUIDs); the image is at the same path for both, as on
#               shared storage.  The guest's check counter runs on on B and
#               reads A; told to stop on its second serial port (a pty on
#               B), it writes B and exits; the domain is gone from A.
#   refusals    no boot: a raw file named *.pcow is refused (the name selects
#               pcow, the content must then be pcow); QEMU as libvirt-qemu
#               without userfaultfd access fails with a message naming it.
# After each boot the host checks with `pcow-img convert -O raw` + cmp that
# the guest's writes (and only they) are in the image, that the image stayed
# thin (`pcow-img info --output=json`: actual-size far below virtual-size)
# and that libvirt gave the files back to root.
#
# The daemon is started by this test, not by systemd: libvirtd runs in a
# private mount namespace (unshare -m) in which /etc/libvirt, /run/libvirt,
# /var/lib/libvirt, /var/log/libvirt and /var/cache/libvirt are bind mounts of
# directories under the test's work directory, so the test writes its own
# qemu.conf and never touches the host's libvirt configuration or state (it
# works next to a system libvirtd too).  It is stopped by its PID.  The
# migrate case's two daemons have a UTS namespace each as well (unshare -m
# -u); the migration stream goes over TCP on 127.0.0.1 (libvirt picks the
# port, from 49152 on).
#
# libvirt's MAC driver is off (security_driver = "none"): no LSM is active
# here, and on a host where one is, this test still checks the same thing
# (DAC, userfaultfd, the chain); enforcement is not tested.
#
# Host changes, all restored at exit: the mode/group of /dev/userfaultfd
# while QEMU runs as libvirt-qemu (the equivalent of the udev rule in
# docs/pcow.rst); the qemu-user case's base under /var/lib/pcow/base (and
# that directory, if it made it); empty mount-point directories it had to
# create.  Kept:
# the packages it installs and the libvirt-qemu user and group (what
# Debian's libvirt-daemon-system would create).
#
# Env: QEMU (default build/qemu-system-x86_64), PCOW_IMG (default
#      build/pcow-img), PCOW_LV_KEEP=1 keeps the work directory,
#      PCOW_LV_CASES="root snapshot snapshot-nodisk saverestore migrate
#      qemu-user raw refusals" to run a
#      subset, QEMU_IMG (default: qemu-img next to QEMU),
#      PCOW_LV_VERBOSE=1 prints the guest consoles.
# Exit: 0 pass, 77 skip (one line saying why), anything else fail.
set -u -o pipefail

top=$(cd "$(dirname "$0")/../../.." && pwd)
QEMU=${QEMU:-$top/build/qemu-system-x86_64}
PCOW_IMG=${PCOW_IMG:-$top/build/pcow-img}
CASES=${PCOW_LV_CASES:-root snapshot snapshot-nodisk saverestore migrate qemu-user raw refusals}
VSIZE=$((1024 * 1024 * 1024))      # virtual size of the pcow images
RAWSIZE=$((128 * 1024 * 1024))     # the raw control image (preallocated!)
QUSER=libvirt-qemu
QGROUP=libvirt-qemu
BASE_DIR=/var/lib/pcow/base     # docs/pcow.rst, "Confined hosts"

skip() { echo "SKIP: $*"; exit 77; }
log() { echo "test-libvirt: $*"; }
failures=0
fail() { echo "test-libvirt: FAIL: $*"; failures=$((failures + 1)); }
die() { echo "test-libvirt: FAIL: $*"; exit 1; }   # cleanup runs from the trap

# ---------------------------------------------------------------- preconditions
[ "$(id -u)" = 0 ] || skip "needs root (runs a system libvirtd)"
[ -x "$QEMU" ] || skip "no QEMU at $QEMU (build it first)"
[ -x "$PCOW_IMG" ] || skip "no pcow-img at $PCOW_IMG (build it first)"
QEMU=$(readlink -f "$QEMU"); PCOW_IMG=$(readlink -f "$PCOW_IMG")
[ -e /dev/userfaultfd ] || skip "kernel has no /dev/userfaultfd"
command -v unshare >/dev/null || skip "no unshare(1)"
unshare --mount --propagation private true 2>/dev/null ||
    skip "cannot create a mount namespace here (needed for a private libvirtd)"

need=()
for p in libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients cpio python3; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || need+=("$p")
done
if ((${#need[@]})); then
    log "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -q && apt-get install -y -q --no-install-recommends "${need[@]}"; } \
        >/tmp/pcow-libvirt-apt.log 2>&1 ||
        skip "apt-get install ${need[*]} failed (see /tmp/pcow-libvirt-apt.log)"
fi

# libvirtd resolves qemu.conf's default user and group (libvirt-qemu) even
# when qemu.conf says root; Debian creates them in libvirt-daemon-system,
# which we do not install (it wants systemd).  Same layout as Debian's.
getent group kvm >/dev/null || groupadd --system kvm
getent group "$QGROUP" >/dev/null || groupadd --system "$QGROUP"
if ! getent passwd "$QUSER" >/dev/null; then
    useradd --system --gid kvm --groups "$QGROUP" --home-dir /var/lib/libvirt \
        --no-create-home --shell /usr/sbin/nologin --comment "Libvirt Qemu" "$QUSER" ||
        die "cannot create user $QUSER"
fi

# ---------------------------------------------------------------- work dir
W=$(mktemp -d /tmp/pcow-libvirt.XXXXXX) || die "mktemp"
chmod 755 "$W"      # QEMU as libvirt-qemu must reach the files below
DAEMON_PID=
DAEMON_DIR=
POLLER=             # the migrate case's job statistics poller
DOMAINS=()          # "dir name" of domains defined in the running daemon
CREATED_DIRS=()
BASE_SUB=           # the qemu-user case's directory in BASE_DIR
UFFD_SAVED=         # "mode group" of /dev/userfaultfd before we changed it

uffd_restore() {
    [ -n "$UFFD_SAVED" ] || return 0
    chmod "${UFFD_SAVED% *}" /dev/userfaultfd
    chgrp "${UFFD_SAVED#* }" /dev/userfaultfd
    UFFD_SAVED=
}

uffd_grant() {      # what the udev rule in docs/pcow.rst does
    [ -n "$UFFD_SAVED" ] || UFFD_SAVED=$(stat -c '%a %g' /dev/userfaultfd)
    chgrp kvm /dev/userfaultfd && chmod 0660 /dev/userfaultfd
}

alive() {   # alive PID: running and not a zombie (kill -0 succeeds on zombies)
    local st
    st=$(cat /proc/"$1"/stat 2>/dev/null) || return 1
    st=${st##*) }
    [ "${st%% *}" != Z ]
}

# uri DIR: the URI of the daemon whose directory is DIR
uri() { echo "qemu:///system?socket=$1/run/libvirt-sock"; }
virsh_at() { local d=$1; shift; timeout 120 virsh -q -c "$(uri "$d")" "$@"; }
virsh_() { virsh_at "$DAEMON_DIR" "$@"; }

# The migrate case runs two daemons: the one the functions here act on
# (DAEMON_*) and the other one (OTHER_*); daemon_swap exchanges them.
OTHER_PID=
OTHER_DIR=
OTHER_DOMAINS=()
daemon_swap() {
    local pid=$DAEMON_PID dir=$DAEMON_DIR doms=("${DOMAINS[@]}")
    DAEMON_PID=$OTHER_PID DAEMON_DIR=$OTHER_DIR DOMAINS=("${OTHER_DOMAINS[@]}")
    OTHER_PID=$pid OTHER_DIR=$dir OTHER_DOMAINS=("${doms[@]}")
}

daemon_stop() {
    [ -n "$DAEMON_PID" ] || return 0
    local d name pid i
    for d in "${DOMAINS[@]}"; do
        name=${d#* }
        virsh_ destroy "$name" >/dev/null 2>&1
        virsh_ undefine "$name" >/dev/null 2>&1
    done
    kill -TERM "$DAEMON_PID" 2>/dev/null
    for i in $(seq 100); do alive "$DAEMON_PID" || break; sleep 0.1; done
    kill -KILL "$DAEMON_PID" 2>/dev/null
    wait "$DAEMON_PID" 2>/dev/null
    # A QEMU that survived (libvirtd does not kill its guests when it exits):
    # libvirt's pid files name it; make sure it is ours before killing it.
    for d in "${DOMAINS[@]}"; do
        name=${d#* }
        pid=$(cat "$DAEMON_DIR/run/qemu/$name.pid" 2>/dev/null) || continue
        if [ -n "$pid" ] && tr '\0' ' ' 2>/dev/null </proc/"$pid"/cmdline |
                grep -q -- "guest=$name,"; then
            kill -KILL "$pid"
        fi
    done
    DAEMON_PID=
    DOMAINS=()
}

cleanup() {
    local rc=$?
    [ -z "$POLLER" ] || kill "$POLLER" 2>/dev/null
    daemon_stop
    daemon_swap
    daemon_stop
    uffd_restore
    [ -z "$BASE_SUB" ] || rm -rf "$BASE_SUB"
    local d
    for d in "${CREATED_DIRS[@]}"; do rmdir "$d" 2>/dev/null; done
    if [ -n "${PCOW_LV_KEEP:-}" ]; then
        log "work directory kept: $W"
    else
        rm -rf "$W"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- daemon
# libvirt builds each domain's private /dev from a child that setns()es into
# QEMU's mount namespace, and setns resets the root directory to the
# namespace's own: inside a chroot (as in ../shared/tools/fresh-machine-check)
# that child sees the host's tree, not ours, and the domain's /dev lacks the
# ACL'd devices.  There, and only there, QEMU keeps the host's /dev.
# Test exactly that: does entering our own mount namespace move the root?
NS_CONF=
ns_root=$(nsenter --mount=/proc/$$/ns/mnt -- stat -c %d:%i / 2>/dev/null)
if [ -n "$ns_root" ] && [ "$ns_root" != "$(stat -c %d:%i /)" ]; then
    NS_CONF='namespaces = []'
    log "running inside a chroot: libvirt's per-domain mount namespace is off"
fi

# daemon_start USER GROUP [extra qemu.conf lines] [HOST]: with HOST, the
# daemon looks like a host of its own (for the migrate case): its own UTS
# namespace with hostname pcow-lv-HOST, and a host_uuid of its own, which
# is what libvirt compares to refuse a migration to the same host
daemon_start() {
    local user=$1 group=$2 extra=${3:-} host=${4:-} d i uts=
    DAEMON_DIR=$W/libvirt-${host:-$user}
    d=$DAEMON_DIR
    mkdir -p "$d"/{etc,run,lib,log,cache}
    cat >"$d/etc/qemu.conf" <<EOF
# written by tests/pcow/libvirt/test-libvirt.sh (private /etc/libvirt)
user = "$user"
group = "$group"
# no virtlogd: QEMU's stdout/stderr go to /var/log/libvirt/qemu/DOM.log
stdio_handler = "file"
# DAC only, whatever LSM the host has (see the header)
security_driver = "none"
$NS_CONF
$extra
EOF
    cat >"$d/etc/libvirtd.conf" <<EOF
log_outputs = "3:file:$d/libvirtd.log"
EOF
    if [ -n "$host" ]; then
        echo "host_uuid = \"$(cat /proc/sys/kernel/random/uuid)\"" \
            >>"$d/etc/libvirtd.conf"
        uts=--uts
    fi
    # Mount points for the bind mounts.  On a host without
    # libvirt-daemon-system these do not exist; we remove them afterwards.
    for i in /run/libvirt /var/lib/libvirt /var/log/libvirt /var/cache/libvirt; do
        if [ ! -d "$i" ]; then
            mkdir -p "$i" && CREATED_DIRS+=("$i")
        fi
    done
    # unshare and bash exec, so $! is libvirtd's PID.
    unshare --mount $uts --propagation private -- bash -c '
        d=$1
        [ -z "$2" ] || hostname "pcow-lv-$2" || exit 1
        mount --bind "$d/etc" /etc/libvirt &&
        mount --bind "$d/run" /run/libvirt &&
        mount --bind "$d/lib" /var/lib/libvirt &&
        mount --bind "$d/log" /var/log/libvirt &&
        mount --bind "$d/cache" /var/cache/libvirt || exit 1
        exec libvirtd -f "$d/etc/libvirtd.conf" -p "$d/libvirtd.pid"
    ' libvirtd-ns "$d" "$host" >"$d/libvirtd.out" 2>&1 </dev/null &
    DAEMON_PID=$!
    for i in $(seq 300); do
        if ! alive "$DAEMON_PID"; then
            cat "$d/libvirtd.out"; grep -E ' error ' "$d/libvirtd.log" 2>/dev/null | tail -5
            DAEMON_PID=
            die "libvirtd ($user) exited at startup"
        fi
        # "virsh version" needs a system emulator to answer; "list" does not.
        [ -S "$d/run/libvirt-sock" ] && virsh_ list --all >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "libvirtd ($user) did not answer within 30 s"
}

# QEMU as libvirt-qemu must be able to reach the emulator (libvirt also
# probes its capabilities as that user).  A clone under /root is not
# reachable: then use a copy; firmware comes from the absolute
# --firmwarepath, so the copy runs the same.
QEMU_USER_BIN=$QEMU
if ! runuser -u "$QUSER" -- test -x "$QEMU" 2>/dev/null; then
    mkdir -p "$W/bin"
    cp "$QEMU" "$W/bin/" && chmod 755 "$W/bin/$(basename "$QEMU")" ||
        die "cannot copy $QEMU"
    QEMU_USER_BIN=$W/bin/$(basename "$QEMU")
    log "$QUSER cannot reach $QEMU; using a copy, $QEMU_USER_BIN"
fi
EMULATOR=$QEMU

# ---------------------------------------------------------------- guest
GUEST_DIR=$(PCOW_IMG=$PCOW_IMG "$top/tests/pcow/guest/build-initramfs.sh" \
            "${PCOW_GUEST_OUT:-$top/tests/pcow/guest/out}") ||
    die "building the guest initramfs failed"
GUEST_DIR=$(readlink -f "$GUEST_DIR")
base_cpio=$(ls "$GUEST_DIR"/base.cpio.* | head -1)
# Our own copy of the kernel: libvirt's DAC driver relabels kernel and initrd
# for the guest's lifetime, and the shared cache may live where
# libvirt-qemu cannot reach.
cp "$GUEST_DIR/vmlinuz" "$W/vmlinuz"

# pattern TAG: 4 KiB of text both the guest (busybox) and the host can make
pattern() { yes "pcow-libvirt-$1" | head -c 4096; }
# helpers for the guest's /test.sh (busybox sh): w BLOCK TAG writes pattern
# TAG at 4 KiB block BLOCK of /dev/pmem0; r BLOCK / e TAG / z: md5 of a
# block read back / of a pattern / of a zero block
GUEST_LIB='
set -e
pat() { yes "pcow-libvirt-$1" | head -c 4096; }
w() { pat "$2" | dd of=/dev/pmem0 bs=4096 seek=$1 conv=notrunc 2>/dev/null; }
r() { dd if=/dev/pmem0 bs=4096 skip=$1 count=1 2>/dev/null | md5sum | cut -d" " -f1; }
e() { pat "$1" | md5sum | cut -d" " -f1; }
z() { dd if=/dev/zero bs=4096 count=1 2>/dev/null | md5sum | cut -d" " -f1; }
'

# make_initrd DIR SCRIPT: base layer + an archive holding /test.sh
make_initrd() {
    local dir=$1 script=$2
    mkdir -p "$dir/cpio"
    printf '%s\n' "$script" >"$dir/cpio/test.sh"
    chmod 755 "$dir/cpio/test.sh"
    {
        cat "$base_cpio"
        # the next archive must start on a 512-byte boundary
        local sz; sz=$(stat -c %s "$base_cpio")
        head -c $(((512 - sz % 512) % 512)) /dev/zero
        (cd "$dir/cpio" && echo test.sh | cpio -o -H newc -R 0:0 --quiet)
    } >"$dir/initrd"
}

# domain_xml NAME DIR MEMORY-DEVICE-XML
domain_xml() {
    cat <<EOF
<!-- no_timer_check: under TCG on a busy host Linux can panic with
     "IO-APIC + timer doesn't work" (seen here) -->
<domain type='qemu'>
  <name>$1</name>
  <memory unit='MiB'>256</memory>
  <maxMemory slots='2' unit='GiB'>8</maxMemory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$W/vmlinuz</kernel>
    <initrd>$2/initrd</initrd>
    <cmdline>console=ttyS0 quiet panic=-1 no_timer_check pcow.pmem=1</cmdline>
  </os>
  <features><acpi/></features>
  <cpu>
    <numa><cell id='0' cpus='0' memory='256' unit='MiB'/></numa>
  </cpu>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>$EMULATOR</emulator>
    <controller type='usb' model='none'/>
    <serial type='file'>
      <source path='$2/console.log'/>
      <target port='0'/>
    </serial>
    <memballoon model='none'/>
$3
  </devices>
</domain>
EOF
}

nvdimm_xml() {      # nvdimm_xml PATH SIZE-BYTES
    cat <<EOF
    <memory model='nvdimm' access='shared'>
      <source><path>$1</path></source>
      <target><size unit='KiB'>$(($2 / 1024))</size><node>0</node></target>
    </memory>
EOF
}

# boot NAME DIR IMAGE SIZE SCRIPT: define, start, wait for power-off, check
# the guest's exit marker.  Returns non-zero (after saying why) on failure.
boot() {
    local name=$1 dir=$2 img=$3 size=$4 script=$5 t0 state i
    make_initrd "$dir" "$script"
    domain_xml "$name" "$dir" "$(nvdimm_xml "$img" "$size")" >"$dir/domain.xml"
    virsh_ define "$dir/domain.xml" >/dev/null || { fail "$name: virsh define"; return 1; }
    DOMAINS+=("$dir $name")
    t0=$(date +%s%N)
    if ! virsh_ start "$name" >"$dir/start.out" 2>&1; then
        cat "$dir/start.out"
        fail "$name: virsh start"
        return 1
    fi
    [ -f "$DAEMON_DIR/log/qemu/$name.log" ] &&
        sed -n '/^LC_ALL/,/^-msg/p' "$DAEMON_DIR/log/qemu/$name.log" >"$dir/cmdline"
    state=
    for i in $(seq 1800); do     # 180 s
        state=$(virsh_ domstate "$name" 2>/dev/null)
        [ "$state" = "shut off" ] && break
        sleep 0.1
    done
    log "$name: virsh start + guest run: $((($(date +%s%N) - t0) / 1000000)) ms, state '$state'"
    [ -n "${PCOW_LV_VERBOSE:-}" ] && sed 's/^/  console| /' "$dir/console.log"
    if [ "$state" != "shut off" ]; then
        virsh_ destroy "$name" >/dev/null 2>&1
        tail -20 "$dir/console.log"
        fail "$name: guest did not power off within 180 s"
        return 1
    fi
    if ! grep -q '^PCOW-GUEST-EXIT 0' "$dir/console.log"; then
        tail -30 "$dir/console.log"
        tail -5 "$DAEMON_DIR/log/qemu/$name.log"
        fail "$name: guest script failed (see console above)"
        return 1
    fi
    virsh_ undefine "$name" >/dev/null || fail "$name: virsh undefine"
    return 0
}

# ---------------------------------------------------------------- host checks
# expect_file DIR SIZE "BLOCK TAG"...: a raw file of SIZE bytes that holds
# pattern TAG at 4 KiB block BLOCK and zeros elsewhere
expect_file() {
    local out=$1/expected.raw size=$2 spec
    shift 2
    rm -f "$out"; truncate -s "$size" "$out"
    for spec in "$@"; do
        pattern "${spec#* }" | dd of="$out" bs=4096 seek="${spec% *}" conv=notrunc status=none
    done
    echo "$out"
}

check_content() {   # check_content NAME IMG EXPECTED-RAW
    local name=$1 img=$2 exp=$3 got=$1.got
    got=$(dirname "$exp")/converted.raw
    rm -f "$got"
    if ! "$PCOW_IMG" convert -O raw "$img" "$got" >/dev/null 2>"$got.err"; then
        cat "$got.err"; fail "$name: pcow-img convert -O raw $img"; return
    fi
    if cmp "$exp" "$got"; then
        log "$name: image content is exactly what the guest wrote"
    else
        fail "$name: image content differs from what the guest wrote"
    fi
    rm -f "$got"
}

check_thin() {      # check_thin NAME IMG
    local name=$1 img=$2 sizes virt actual
    sizes=$("$PCOW_IMG" info --output=json "$img" | python3 -c '
import json, sys
j = json.load(sys.stdin)
if isinstance(j, list):
    j = j[0]
print(j["virtual-size"], j["actual-size"])') ||
        { fail "$name: pcow-img info --output=json $img"; return; }
    read -r virt actual <<<"$sizes"
    log "$name: virtual-size $virt, actual-size $actual (du: $(du -k "$img" | cut -f1) KiB)"
    [ "$virt" = "$VSIZE" ] || fail "$name: virtual-size $virt, expected $VSIZE"
    # the guest wrote a few 4 KiB blocks: a few clusters + metadata
    [ "$actual" -lt $((32 * 1024 * 1024)) ] ||
        fail "$name: image is not thin (actual-size $actual of $virt): prealloc filled it?"
}

check_owner() {     # check_owner NAME FILE...: libvirt gave them back to root
    local name=$1 f o
    shift
    for f in "$@"; do
        o=$(stat -c %U:%G "$f")
        [ "$o" = root:root ] || fail "$name: $f is owned by $o after shutdown, expected root:root"
    done
}

show_nvdimm_cmdline() {     # the -object/-device lines libvirt generated
    [ -f "$1/cmdline" ] && grep -E 'memory-backend-file|"nvdimm"' "$1/cmdline" | sed 's/^/    /'
}

# ---------------------------------------------------------------- cases
case_root() {
    local dir=$W/root img
    mkdir -p "$dir"; img=$dir/nv.pcow
    "$PCOW_IMG" create -q -f pcow "$img" "$VSIZE" || { fail "root: pcow-img create"; return; }
    local last=$((VSIZE / 4096 - 1))
    boot pcow-lv-root "$dir" "$img" "$VSIZE" "$GUEST_LIB
w 0 r0; w 1 r1; w 4097 r4097; w 100000 r100000; w $last rlast
sync
echo GUEST-WROTE" || return
    show_nvdimm_cmdline "$dir"
    check_content root "$img" "$(expect_file "$dir" "$VSIZE" "0 r0" "1 r1" "4097 r4097" \
        "100000 r100000" "$last rlast")"
    check_thin root "$img"
    check_owner root "$img"
}

case_qemu_user() {
    local dir=$W/qemu-user base img d
    mkdir -p "$dir"; img=$dir/nv.pcow
    # The base goes to the base directory (a directory of its own in it)
    for d in /var/lib/pcow "$BASE_DIR"; do
        if [ ! -d "$d" ]; then
            mkdir -m 0755 "$d" || { fail "qemu-user: cannot create $d"; return; }
            CREATED_DIRS=("$d" "${CREATED_DIRS[@]}")
        fi
    done
    BASE_SUB=$(mktemp -d "$BASE_DIR/pcow-libvirt.XXXXXX") &&
        chmod 0755 "$BASE_SUB" || { fail "qemu-user: mktemp in $BASE_DIR"; return; }
    base=$BASE_SUB/base.pcow
    # base: data at blocks 50 and 200000; root-owned, world-readable
    expect_file "$dir" "$VSIZE" "50 b50" "200000 b200000" >/dev/null
    "$PCOW_IMG" convert -f raw -O pcow "$dir/expected.raw" "$base" ||
        { fail "qemu-user: making the base image"; return; }
    chmod 0644 "$base"
    "$PCOW_IMG" create -q -f pcow -b "$base" -F pcow "$img" ||
        { fail "qemu-user: create overlay"; return; }
    log "qemu-user: $("$PCOW_IMG" info "$img" | grep '^chain files:')"
    cp "$base" "$dir/base.before"
    uffd_grant
    boot pcow-lv-qemu "$dir" "$img" "$VSIZE" "$GUEST_LIB"'
[ "$(r 50)" = "$(e b50)" ] || { echo "GUEST: base data at block 50 not visible"; exit 3; }
[ "$(r 200000)" = "$(e b200000)" ] || { echo "GUEST: base data at block 200000 not visible"; exit 3; }
[ "$(r 7)" = "$(z)" ] || { echo "GUEST: a hole does not read as zeros"; exit 3; }
echo GUEST-BASE-OK
w 51 q51; w 3 q3; w 200001 q200001
sync
echo GUEST-WROTE' || { uffd_restore; return; }
    uffd_restore
    show_nvdimm_cmdline "$dir"
    check_content qemu-user "$img" "$(expect_file "$dir" "$VSIZE" "50 b50" "51 q51" "3 q3" \
        "200000 b200000" "200001 q200001")"
    check_thin qemu-user "$img"
    cmp -s "$base" "$dir/base.before" || fail "qemu-user: the base image changed"
    check_owner qemu-user "$img" "$base"
}

case_raw() {
    local dir=$W/raw img
    mkdir -p "$dir"; img=$dir/nv.img
    truncate -s "$RAWSIZE" "$img"
    uffd_grant      # not needed for raw; same host setup as the pcow case
    boot pcow-lv-raw "$dir" "$img" "$RAWSIZE" "$GUEST_LIB
w 5 raw5
sync" || { uffd_restore; return; }
    uffd_restore
    show_nvdimm_cmdline "$dir"
    expect_file "$dir" "$RAWSIZE" "5 raw5" >/dev/null
    cmp "$dir/expected.raw" "$img" || fail "raw: content differs"
    check_owner raw "$img"
}

# wait_console DIR REGEX: the guest printed a line matching REGEX (60 s)
wait_console() {
    local i
    for i in $(seq 600); do
        grep -q -E "$2" "$1/console.log" 2>/dev/null && return 0
        sleep 0.1
    done
    tail -20 "$1/console.log"
    return 1
}

# guest_cmd DIR CMD: one line to the guest's second serial port
guest_cmd() {
    python3 -c 'import socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(sys.argv[2].encode() + b"\n")
time.sleep(0.3)
s.close()' "$1/ctl.sock" "$2"
}

# info_pcow NAME: HMP "info pcow" of the running domain NAME
info_pcow() { virsh_ qemu-monitor-command "$1" --hmp 'info pcow'; }

# vm_snap MODE DOMAIN create|revert|delete TAG: virsh snapshot-create-as,
# snapshot-revert, snapshot-delete; with MODE nodisk HMP savevm, loadvm,
# delvm through virsh qemu-monitor-command, since libvirt 9.0 refuses an
# internal snapshot of a domain without a disk ("internal and full system
# snapshots require all disks to be selected for snapshot").  Output and
# status of the command; an HMP error message is a failure.
vm_snap() {
    local hmp out
    if [ "$1" != nodisk ]; then
        case $3 in
        create) virsh_ snapshot-create-as "$2" "$4" 2>&1 ;;
        *) virsh_ "snapshot-$3" "$2" "$4" 2>&1 ;;
        esac
        return
    fi
    case $3 in create) hmp=savevm ;; revert) hmp=loadvm ;; *) hmp=delvm ;; esac
    out=$(virsh_ qemu-monitor-command "$2" --hmp "$hmp $4" 2>&1) &&
        [ -z "$(tr -d '[:space:]' <<<"$out")" ]
    local rc=$?
    echo "$out"
    return $rc
}

# case_snapshot [nodisk]: with a qcow2 disk (it holds the vmstate), or
# with none (snapshot-nodisk: the pcow image holds the vmstate too)
case_snapshot() {
    local c=snapshot${1:+-$1} dir name img qemu_img out i disk=
    local how="virsh snapshot-create-as"
    dir=$W/$c name=pcow-lv-$c
    [ -n "${1:-}" ] && how="HMP savevm (virsh qemu-monitor-command)"
    mkdir -p "$dir"; img=$dir/nv.pcow
    qemu_img=${QEMU_IMG:-$(dirname "$QEMU")/qemu-img}
    "$PCOW_IMG" create -q -f pcow "$img" "$VSIZE" ||
        { fail "$c: creating the image"; return; }
    if [ -z "${1:-}" ]; then
        "$qemu_img" create -q -f qcow2 "$dir/disk.qcow2" 64M ||
            { fail "$c: creating the disk"; return; }
        disk="
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='$dir/disk.qcow2'/>
      <target dev='hda' bus='ide'/>
    </disk>"
    fi
    make_initrd "$dir" "$GUEST_LIB"'
exec 3</dev/ttyS1
w 10 a10; w 20000 a20000; sync
echo GUEST-WROTE-A
while read -u 3 cmd; do
    case $cmd in
    b) w 10 b10; w 30000 b30000; sync; echo GUEST-WROTE-B ;;
    c) echo 3 > /proc/sys/vm/drop_caches
       if [ "$(r 10)" = "$(e a10)" ] && [ "$(r 20000)" = "$(e a20000)" ] &&
          [ "$(r 30000)" = "$(z)" ]; then
           echo GUEST-SEES-A
       else
           echo GUEST-SEES-WRONG
       fi ;;
    q) echo GUEST-DONE; exit 0 ;;
    esac
done'
    domain_xml "$name" "$dir" "$(nvdimm_xml "$img" "$VSIZE")$disk
    <serial type='unix'>
      <source mode='bind' path='$dir/ctl.sock'/>
      <target port='1'/>
    </serial>" >"$dir/domain.xml"
    virsh_ define "$dir/domain.xml" >/dev/null || { fail "$c: virsh define"; return; }
    DOMAINS+=("$dir $name")
    virsh_ start "$name" >"$dir/start.out" 2>&1 ||
        { cat "$dir/start.out"; fail "$c: virsh start"; return; }
    wait_console "$dir" '^GUEST-WROTE-A' || { fail "$c: guest did not write A"; return; }
    if ! out=$(vm_snap "${1:-}" "$name" create s1); then
        fail "$c: snapshot create: $out"; return
    fi
    info_pcow "$name" | grep -q -w s1 &&
        log "$c: $how s1: the pcow image has snapshot s1" ||
        fail "$c: no pcow snapshot s1 after $how ($(info_pcow "$name" | tr '\n' ' '))"
    if [ -n "${1:-}" ]; then
        # docs/pcow.rst says libvirt refuses: find out when it no longer does
        out=$(virsh_ snapshot-create-as "$name" s0 2>&1) &&
            fail "$c: libvirt took an internal snapshot without a disk" ||
            log "$c: virsh snapshot-create-as refused: $out"
        out=$("$PCOW_IMG" snapshot -U -l "$img")
        grep -E '^[0-9]+ +s1 +[0-9.]+ [KMG]iB ' <<<"$out" >/dev/null &&
            log "$c: s1 holds the VM state:" \
                "$(grep -w s1 <<<"$out" | tr -s ' ')" ||
            fail "$c: s1 holds no VM state in the image: $out"
    fi
    guest_cmd "$dir" b
    wait_console "$dir" '^GUEST-WROTE-B' || { fail "$c: guest did not write B"; return; }
    if ! out=$(vm_snap "${1:-}" "$name" revert s1); then
        fail "$c: snapshot revert: $out"; return
    fi
    [ "$(virsh_ domstate "$name")" = running ] || fail "$c: not running after the revert"
    guest_cmd "$dir" c
    if wait_console "$dir" '^GUEST-SEES-'; then
        grep -q '^GUEST-SEES-A' "$dir/console.log" &&
            log "$c: after the revert to s1 the guest reads A, B is gone" ||
            fail "$c: after the revert the guest does not read A"
    else
        fail "$c: guest did not answer after the revert"
    fi
    if ! out=$(vm_snap "${1:-}" "$name" delete s1); then
        fail "$c: snapshot delete: $out"
    fi
    info_pcow "$name" | grep -q -w s1 &&
        fail "$c: pcow snapshot s1 still there after the delete" ||
        log "$c: deleting s1 deleted the pcow snapshot"
    guest_cmd "$dir" q
    wait_console "$dir" '^PCOW-GUEST-EXIT 0' || fail "$c: guest did not exit 0"
    for i in $(seq 300); do
        [ "$(virsh_ domstate "$name" 2>/dev/null)" = "shut off" ] && break
        sleep 0.1
    done
    virsh_ undefine "$name" >/dev/null || fail "$c: virsh undefine"
    "$PCOW_IMG" check "$img" >/dev/null || fail "$c: pcow-img check"
    "$PCOW_IMG" snapshot -l "$img" | grep -q -w s1 &&
        fail "$c: s1 left in the image"
    check_content "$c" "$img" "$(expect_file "$dir" "$VSIZE" "10 a10" "20000 a20000")"
}

# last_check DIR: the highest N of the "GUEST-CHECK N A" lines, 0 if none
# (a "GUEST-CHECK N WRONG" line makes it -1)
last_check() {
    grep -q '^GUEST-CHECK [0-9]* WRONG' "$1/console.log" 2>/dev/null &&
        { echo -1; return; }
    grep -o '^GUEST-CHECK [0-9]* A' "$1/console.log" 2>/dev/null |
        awk '{ if ($2 > n) n = $2 } END { print n + 0 }'
}

# wait_check DIR N: a "GUEST-CHECK M A" line with M > N appears
wait_check() {
    local i c
    for i in $(seq 900); do
        c=$(last_check "$1")
        [ "$c" -gt "$2" ] && return 0
        [ "$c" -lt 0 ] && break
        sleep 0.1
    done
    tail -5 "$1/console.log"
    return 1
}

case_saverestore() {
    local dir=$W/saverestore name=pcow-lv-save img n out size
    mkdir -p "$dir"; img=$dir/nv.pcow
    "$PCOW_IMG" create -q -f pcow "$img" "$VSIZE" ||
        { fail "saverestore: creating the image"; return; }
    # The guest checks its NVDIMM (page cache dropped) every half second
    # and says so with a counter that runs on across save and restore.
    make_initrd "$dir" "$GUEST_LIB"'
w 10 a10; w 20000 a20000; sync
echo GUEST-WROTE-A
n=0
while :; do
    n=$((n + 1))
    echo 3 > /proc/sys/vm/drop_caches
    if [ "$(r 10)" = "$(e a10)" ] && [ "$(r 20000)" = "$(e a20000)" ]; then
        echo "GUEST-CHECK $n A"
    else
        echo "GUEST-CHECK $n WRONG"
    fi
    usleep 500000
done'
    domain_xml "$name" "$dir" "$(nvdimm_xml "$img" "$VSIZE")" >"$dir/domain.xml"
    virsh_ define "$dir/domain.xml" >/dev/null || { fail "saverestore: virsh define"; return; }
    DOMAINS+=("$dir $name")
    virsh_ start "$name" >"$dir/start.out" 2>&1 ||
        { cat "$dir/start.out"; fail "saverestore: virsh start"; return; }
    wait_check "$dir" 1 || { fail "saverestore: guest did not check A"; return; }

    # virsh save / restore: the state file holds no NVDIMM page
    out=$(virsh_ save "$name" "$dir/state" 2>&1) ||
        { fail "saverestore: virsh save: $out"; return; }
    n=$(last_check "$dir")
    size=$(stat -c %s "$dir/state")
    [ "$size" -lt $((VSIZE / 8)) ] &&
        log "saverestore: virsh save: state file $size bytes (NVDIMM $VSIZE)" ||
        fail "saverestore: state file $size bytes: the NVDIMM is in it"
    out=$(virsh_ restore "$dir/state" 2>&1) ||
        { fail "saverestore: virsh restore: $out"; return; }
    wait_check "$dir" "$n" &&
        log "saverestore: after virsh restore the guest runs on and reads A" ||
        { fail "saverestore: no check after virsh restore"; return; }

    # managedsave, then start restores it
    n=$(last_check "$dir")
    out=$(virsh_ managedsave "$name" 2>&1) ||
        { fail "saverestore: virsh managedsave: $out"; return; }
    out=$(virsh_ start "$name" 2>&1) ||
        { fail "saverestore: virsh start after managedsave: $out"; return; }
    wait_check "$dir" "$n" &&
        log "saverestore: after managedsave + start the guest runs on and reads A" ||
        { fail "saverestore: no check after managedsave + start"; return; }

    # a state file whose image changed meanwhile is refused
    out=$(virsh_ save "$name" "$dir/state2" 2>&1) ||
        { fail "saverestore: second virsh save: $out"; return; }
    "$PCOW_IMG" snapshot -c x "$img" && "$PCOW_IMG" snapshot -d x "$img" ||
        { fail "saverestore: pcow-img snapshot -c/-d"; return; }
    if out=$(virsh_ restore "$dir/state2" 2>&1); then
        fail "saverestore: virsh restore onto a changed image succeeded"
    elif [[ $out == *"changed since this state was saved"* ]]; then
        log "saverestore: restore onto a changed image refused: $(echo "$out" | grep -o "memory backend.*saved" | head -1)"
    else
        fail "saverestore: restore refused, but not for the image: $out"
    fi
    virsh_ undefine --managed-save "$name" >/dev/null ||
        fail "saverestore: virsh undefine"
    "$PCOW_IMG" check "$img" >/dev/null || fail "saverestore: pcow-img check"
    check_content saverestore "$img" "$(expect_file "$dir" "$VSIZE" "10 a10" "20000 a20000")"
}

# pty_of DIR NAME PORT: the host end of serial port PORT (type pty) of the
# running domain NAME in the daemon at DIR
pty_of() {
    virsh_at "$1" dumpxml "$2" | xmllint --xpath \
        "string(//devices/serial[target/@port='$3']/source/@path)" -
}

# quit_guest DIR PTY: say "q" on the guest's second serial port until it
# answers GUEST-GOT-Q (it may not read before the port is open)
quit_guest() {
    local i j fd
    for i in $(seq 24); do
        exec {fd}>"$2" || return 1
        printf 'q\n' >&"$fd"
        sleep 0.5
        exec {fd}>&-
        for j in $(seq 50); do
            grep -q '^GUEST-GOT-Q' "$1/console.log" && return 0
            sleep 0.1
        done
    done
    return 1
}

# case_migrate: virsh migrate --live from daemon A (DAEMON_*) to daemon B
# (OTHER_*), which look like two hosts (daemon_start HOST).  The image is at
# the same path for both, as on shared storage.  The guest writes A, then
# checks it every half second with a counter that runs on across the
# migration, until told "q" on its second serial port (a pty; B makes its
# own); then it writes B and exits.
case_migrate() {
    local dir=$W/migrate name=pcow-lv-mig img n out t0 pty i st total
    mkdir -p "$dir"; img=$dir/nv.pcow
    "$PCOW_IMG" create -q -f pcow "$img" "$VSIZE" ||
        { fail "migrate: creating the image"; return; }
    make_initrd "$dir" "$GUEST_LIB"'
exec 3</dev/ttyS1
(while read -r c <&3; do
    case $c in q*) : >/tmp/quit; echo GUEST-GOT-Q ;; esac
done) &
w 10 a10; w 20000 a20000; sync
echo GUEST-WROTE-A
n=0
while [ ! -e /tmp/quit ]; do
    n=$((n + 1))
    echo 3 > /proc/sys/vm/drop_caches
    if [ "$(r 10)" = "$(e a10)" ] && [ "$(r 20000)" = "$(e a20000)" ]; then
        echo "GUEST-CHECK $n A"
    else
        echo "GUEST-CHECK $n WRONG"
    fi
    usleep 500000
done
w 30000 b30000; sync
echo GUEST-WROTE-B'
    # Both QEMUs write the console file, the destination from its start
    # on: append, do not truncate.
    domain_xml "$name" "$dir" "$(nvdimm_xml "$img" "$VSIZE")
    <serial type='pty'>
      <target port='1'/>
    </serial>" |
        sed "s|<source path='$dir/console.log'/>|<source path='$dir/console.log' append='on'/>|" \
        >"$dir/domain.xml"
    virsh_ define "$dir/domain.xml" >/dev/null || { fail "migrate: virsh define"; return; }
    DOMAINS+=("$dir $name")
    OTHER_DOMAINS+=("$dir $name")
    virsh_ start "$name" >"$dir/start.out" 2>&1 ||
        { cat "$dir/start.out"; fail "migrate: virsh start"; return; }
    wait_check "$dir" 1 || { fail "migrate: guest did not check A"; return; }

    # The stream goes to 127.0.0.1, named on the command line: qemu.conf's
    # migration_host and migration_address must not be local addresses,
    # and B's hostname resolves nowhere.
    # A's job statistics while the migration runs (32 MiB/s: a few seconds):
    # their memory total while memory remains (once QEMU is done, the total
    # counts every RAM block again)
    (while :; do virsh_ domjobinfo --rawstats "$name" 2>/dev/null; sleep 0.2; done) \
        >"$dir/jobs" 2>&1 &
    POLLER=$!
    t0=$(date +%s%N)
    out=$(timeout 600 virsh -q -c "$(uri "$DAEMON_DIR")" migrate --live \
              --persistent --undefinesource --listen-address 127.0.0.1 \
              --bandwidth 32 \
              "$name" "$(uri "$OTHER_DIR")" tcp://127.0.0.1 2>&1)
    st=$?
    kill "$POLLER"; wait "$POLLER" 2>/dev/null; POLLER=
    [ "$st" = 0 ] || { fail "migrate: virsh migrate --live: $out"; return; }
    log "migrate: virsh migrate --live --persistent --undefinesource:" \
        "$((($(date +%s%N) - t0) / 1000000)) ms"
    total=$(awk '$1 == "memory_total:" { t = $2 }
                 $1 == "memory_remaining:" && $2 > 0 && t > n { n = t }
                 END { print n + 0 }' "$dir/jobs")
    if [ "$total" = 0 ]; then
        fail "migrate: no memory total from A's domjobinfo while migrating"
    elif [ "$total" -lt "$VSIZE" ]; then
        log "migrate: memory total while migrating $total bytes: the" \
            "NVDIMM ($VSIZE) is not in the stream"
    else
        fail "migrate: memory total while migrating $total: the NVDIMM is in it"
    fi
    n=$(last_check "$dir")
    st=$(virsh_at "$OTHER_DIR" domstate "$name" 2>&1)
    [ "$st" = running ] && log "migrate: the domain runs on B" ||
        fail "migrate: domain state on B: $st"
    virsh_ list --all --name | grep -q -x "$name" &&
        fail "migrate: the domain is still on A: $(virsh_ domstate "$name" 2>&1)" ||
        log "migrate: the domain is gone from A"
    virsh_at "$OTHER_DIR" domjobinfo --completed "$name" >"$dir/jobinfo" 2>&1
    log "migrate: B's domjobinfo --completed:" \
        "$(grep -E '^(Memory processed|Total downtime)' "$dir/jobinfo" |
           tr -s ' ' | paste -sd';')"
    wait_check "$dir" "$n" &&
        log "migrate: on B the guest runs on (check $((n + 1)) after $n) and reads A" ||
        { fail "migrate: no check on B after check $n"; return; }
    [ "$(grep -c '^PCOW-GUEST-START' "$dir/console.log")" = 1 ] ||
        fail "migrate: the guest booted again"

    pty=$(pty_of "$OTHER_DIR" "$name" 1)
    [ -c "$pty" ] || { fail "migrate: no pty for serial port 1 on B ($pty)"; return; }
    quit_guest "$dir" "$pty" || { fail "migrate: the guest did not take q on $pty"; return; }
    wait_console "$dir" '^PCOW-GUEST-EXIT 0' || { fail "migrate: guest did not exit 0"; return; }
    for i in $(seq 600); do
        st=$(virsh_at "$OTHER_DIR" domstate "$name" 2>/dev/null)
        [ "$st" = "shut off" ] && break
        sleep 0.1
    done
    [ "$st" = "shut off" ] || { fail "migrate: state on B after exit: $st"; return; }
    virsh_at "$OTHER_DIR" undefine "$name" >/dev/null || fail "migrate: virsh undefine on B"
    "$PCOW_IMG" check "$img" >/dev/null || fail "migrate: pcow-img check"
    check_content migrate "$img" "$(expect_file "$dir" "$VSIZE" "10 a10" "20000 a20000" \
        "30000 b30000")"
    check_thin migrate "$img"
}

# start_must_fail NAME DIR IMG SIZE REGEX: QEMU refuses; its message matches
start_must_fail() {
    local name=$1 dir=$2 img=$3 size=$4 rx=$5
    make_initrd "$dir" "exit 1"
    domain_xml "$name" "$dir" "$(nvdimm_xml "$img" "$size")" >"$dir/domain.xml"
    virsh_ define "$dir/domain.xml" >/dev/null || { fail "$name: virsh define"; return; }
    DOMAINS+=("$dir $name")
    if virsh_ start "$name" >"$dir/start.out" 2>&1; then
        virsh_ destroy "$name" >/dev/null 2>&1
        fail "$name: virsh start succeeded, expected QEMU to refuse"
    elif grep -q -E "$rx" "$dir/start.out"; then
        log "$name: refused as expected: $(grep -o -E ".{0,60}($rx).{0,80}" "$dir/start.out" | head -1)"
    else
        cat "$dir/start.out"
        fail "$name: refused, but the message does not match /$rx/"
    fi
    virsh_ undefine "$name" >/dev/null 2>&1
}

case_refusals_root() {      # runs with the root daemon
    local dir=$W/refuse-name
    mkdir -p "$dir"
    truncate -s "$VSIZE" "$dir/raw.pcow"
    start_must_fail pcow-lv-name "$dir" "$dir/raw.pcow" "$VSIZE" 'use format=raw'
}

case_refusals_user() {      # runs with the libvirt-qemu daemon, no uffd access
    local dir=$W/refuse-uffd
    mkdir -p "$dir"
    "$PCOW_IMG" create -q -f pcow "$dir/nv.pcow" "$VSIZE" || { fail "refuse-uffd: create"; return; }
    uffd_restore
    if [ "$(stat -c '%a' /dev/userfaultfd)" != 600 ] ||
       [ "$(sysctl -n vm.unprivileged_userfaultfd 2>/dev/null)" != 0 ]; then
        log "refuse-uffd: not checked (this host already gives userfaultfd to everyone)"
        return
    fi
    start_must_fail pcow-lv-nouffd "$dir" "$dir/nv.pcow" "$VSIZE" 'userfaultfd'
    grep -q cgroup_device_acl "$dir/start.out" ||
        log "refuse-uffd: note: QEMU's message does not mention libvirt's cgroup_device_acl"
}

want() { [[ " $CASES " == *" $1 "* ]]; }

log "QEMU=$QEMU PCOW_IMG=$PCOW_IMG work=$W"
if want root || want snapshot || want snapshot-nodisk || want saverestore ||
   want refusals; then
    daemon_start root root
    log "libvirtd (QEMU as root) pid $DAEMON_PID"
    want root && case_root
    want snapshot && case_snapshot
    want snapshot-nodisk && case_snapshot nodisk
    want saverestore && case_saverestore
    want refusals && case_refusals_root
    daemon_stop
fi
if want migrate; then
    daemon_start root root "" mig-a
    daemon_swap
    daemon_start root root "" mig-b
    log "libvirtd B (QEMU as root, host pcow-lv-mig-b) pid $DAEMON_PID"
    daemon_swap
    log "libvirtd A (QEMU as root, host pcow-lv-mig-a) pid $DAEMON_PID"
    case_migrate
    daemon_stop
    daemon_swap
    daemon_stop
fi
if want qemu-user || want raw || want refusals; then
    # libvirt 9.0 gives QEMU a private /dev (namespaces = ["mount"]) and a
    # devices cgroup that both lack /dev/userfaultfd: list it here.
    daemon_start "$QUSER" "$QGROUP" 'cgroup_device_acl = [
    "/dev/null", "/dev/full", "/dev/zero", "/dev/random", "/dev/urandom",
    "/dev/ptmx", "/dev/kvm", "/dev/userfaultfd"
]'
    log "libvirtd (QEMU as $QUSER) pid $DAEMON_PID"
    EMULATOR=$QEMU_USER_BIN
    want qemu-user && case_qemu_user
    want raw && case_raw
    want refusals && case_refusals_user
    daemon_stop
fi

if [ "$failures" -gt 0 ]; then
    echo "test-libvirt: $failures failure(s)"
    exit 1
fi
echo "test-libvirt: all checks passed"
exit 0
