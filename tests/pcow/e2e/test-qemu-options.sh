#!/usr/bin/env bash
#
# memory-backend-file,format=pcow: option handling and refusals.
#
# Every refused combination must make QEMU exit with status 1 and print one
# line, "qemu-system-x86_64: -object memory-backend-file,...: <message>".
# Accepted ones must start the machine (paused, -S) with the image's size.
# No guest is booted: each QEMU runs with -S and an HMP monitor on stdin.
#
# Environment: QEMU (qemu-system-x86_64 with pcow), PCOW_IMG (pcow-img).
# Exit: 0 pass, 77 skip, 1 fail.
#
# This work is licensed under the terms of the GNU GPL, version 2 or later.

set -u

QEMU=${QEMU:-}
PCOW_IMG=${PCOW_IMG:-}
if [ -z "$QEMU" ] || [ ! -x "$QEMU" ]; then
    echo "SKIP: QEMU is not set to an executable ('$QEMU')"
    exit 77
fi
if [ -z "$PCOW_IMG" ] || [ ! -x "$PCOW_IMG" ]; then
    echo "SKIP: PCOW_IMG is not set to an executable ('$PCOW_IMG')"
    exit 77
fi
if ! "$QEMU" -object memory-backend-file,help 2>/dev/null | grep -q '^ *format='; then
    echo "SKIP: $QEMU has no memory-backend-file format property"
    exit 77
fi

tmp=$(mktemp -d /tmp/pcow-qemu-options.XXXXXX)
bg_pids=()
cleanup() {
    for p in "${bg_pids[@]}"; do
        kill "$p" 2>/dev/null
    done
    rm -rf "$tmp"
}
trap cleanup EXIT

qname=$(basename "$QEMU")
fails=0
count=0

ok()   { count=$((count + 1)); echo "ok   $*"; }
fail() { count=$((count + 1)); fails=$((fails + 1)); echo "FAIL $*"; }

# Common machine: an NVDIMM slot, TCG, paused, no display.
# shellcheck disable=SC2054  # commas belong to the option values
machine=(-machine pc,nvdimm=on,accel=tcg -m 128M,slots=2,maxmem=4G
         -display none -nodefaults -S)

# run_qemu OBJECT-OPTS [DEVICE-OPTS] [HMP commands on stdin]
# Runs QEMU with the HMP monitor on stdin; sets $rc, $out (stdout), $err.
run_qemu() {
    local obj=$1 dev=${2-nvdimm,id=nv0,memdev=pm} hmp=${3-}
    local devargs=()

    [ -n "$dev" ] && devargs=(-device "$dev")
    printf '%s\nquit\n' "$hmp" |
        timeout 60 "$QEMU" "${machine[@]}" -monitor stdio \
            -object "$obj" "${devargs[@]}" \
            >"$tmp/out" 2>"$tmp/err"
    rc=$?
    out=$(cat "$tmp/out")
    err=$(cat "$tmp/err")
}

# expect_refusal NAME OBJECT-OPTS SUBSTRING...
# QEMU must exit 1 with exactly one stderr line naming the -object option
# and containing every SUBSTRING.
expect_refusal() {
    local name=$1 obj=$2 s
    shift 2
    run_qemu "$obj"
    if [ "$rc" -ne 1 ]; then
        fail "$name: exit status $rc, expected 1; stderr: $err"
        return
    fi
    if [ "$(printf '%s\n' "$err" | grep -c .)" -ne 1 ]; then
        fail "$name: expected one line on stderr, got: $err"
        return
    fi
    if [[ "$err" != "$qname: -object "*": "* ]]; then
        fail "$name: message does not name the -object option: $err"
        return
    fi
    for s; do
        if [[ "$err" != *"$s"* ]]; then
            fail "$name: message lacks '$s': $err"
            return
        fi
    done
    ok "$name: $err"
}

# expect_start NAME OBJECT-OPTS [DEVICE-OPTS] [HMP] -- must start and quit.
expect_start() {
    local name=$1
    shift
    run_qemu "$@"
    if [ "$rc" -ne 0 ]; then
        fail "$name: exit status $rc, expected 0; stderr: $err"
        return 1
    fi
    return 0
}

disk_bytes() { echo $(( $(stat -c %b "$1") * $(stat -c %B "$1") )); }

json_field() {  # json_field FILE KEY  (top-level key of pcow-img info JSON)
    "$PCOW_IMG" info -U --output=json "$1" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$2"
}

img=$tmp/a.pcow
if ! "$PCOW_IMG" create -q -f pcow "$img" 64M >"$tmp/create.log" 2>&1; then
    echo "FAIL: pcow-img create failed: $(cat "$tmp/create.log")"
    exit 1
fi
base_opts="memory-backend-file,id=pm,mem-path=$img,format=pcow,share=on"

# --- accepted: size from the image, shown by info memdev/memory-devices ----
if expect_start "size from image" "$base_opts" "" \
        $'info memdev\ninfo memory-devices'; then
    if grep -Eq 'size: +67108864' <<< "$out"; then
        ok "size from image: info memdev/memory-devices show 67108864"
    else
        fail "size from image: 67108864 not in HMP output: $out"
    fi
fi
if expect_start "nvdimm memory device" "$base_opts" nvdimm,id=nv0,memdev=pm \
        'info memory-devices'; then
    if grep -q 'nvdimm' <<< "$out" && grep -Eq 'size: +67108864' <<< "$out"; then
        ok "nvdimm memory device: listed with size 67108864"
    else
        fail "nvdimm memory device: not listed as expected: $out"
    fi
fi
expect_start "size= equal to the image" "$base_opts,size=64M" &&
    ok "size= equal to the image is accepted"
if expect_start "virtio-pmem" "$base_opts" virtio-pmem-pci,id=vp0,memdev=pm \
        'info memory-devices'; then
    if grep -q 'virtio-pmem' <<< "$out" && grep -Eq 'size: +67108864' <<< "$out"; then
        ok "virtio-pmem-pci on a pcow backend: listed with size 67108864"
    else
        fail "virtio-pmem-pci: not listed as expected: $out"
    fi
fi
expect_start "align=2M" "$base_opts,align=2M" &&
    ok "align=2M is accepted"
expect_refusal "align not a power of two" "$base_opts,align=12K" \
    "power of two"

# Clean close: after quit the in-use flag is clear and a writer can open it.
if [ "$(json_field "$img" dirty-flag)" = False ]; then
    ok "quit leaves the image clean (dirty-flag false)"
else
    fail "quit left the image dirty: $("$PCOW_IMG" info -U "$img" 2>&1)"
fi

# --- refusals ------------------------------------------------------------------
expect_refusal "size mismatch" "$base_opts,size=32M" \
    "33554432" "67108864" "$img"
expect_refusal "share=off" \
    "memory-backend-file,id=pm,mem-path=$img,format=pcow,share=off" \
    "share=on"
expect_refusal "share not given" \
    "memory-backend-file,id=pm,mem-path=$img,format=pcow" "share=on"
expect_refusal "discard-data=on" "$base_opts,discard-data=on" "discard-data"
expect_refusal "unknown format" \
    "memory-backend-file,id=pm,mem-path=$img,format=qcow2,share=on" \
    "qcow2" "raw" "pcow"
expect_refusal "missing image" \
    "memory-backend-file,id=pm,mem-path=$tmp/missing.pcow,format=pcow,share=on" \
    "$tmp/missing.pcow"

# Malformed: a pcow image whose header is damaged.
bad=$tmp/bad.pcow
cp "$img" "$bad"
printf '\xff\xff\xff\xff\xff\xff\xff\xff' |
    dd of="$bad" bs=1 seek=16 conv=notrunc status=none
printf '\xff\xff\xff\xff\xff\xff\xff\xff' |
    dd of="$bad" bs=1 seek=4096 conv=notrunc status=none
expect_refusal "malformed image" \
    "memory-backend-file,id=pm,mem-path=$bad,format=pcow,share=on" "$bad"

# Not a pcow image at all, format=pcow given.
raw=$tmp/plain.raw
truncate -s 64M "$raw"
expect_refusal "raw file with format=pcow" \
    "memory-backend-file,id=pm,mem-path=$raw,format=pcow,share=on" "$raw"

# A raw file named .pcow: the name selects pcow, the content is refused and
# the message says how to use it as raw.
rawp=$tmp/raw.pcow
truncate -s 64M "$rawp"
expect_refusal "raw file named .pcow" \
    "memory-backend-file,id=pm,mem-path=$rawp,share=on" "$rawp" "format=raw"
# ... and format=raw takes it as raw (upstream behaviour).
expect_start "raw file named .pcow, format=raw" \
    "memory-backend-file,id=pm,mem-path=$rawp,format=raw,size=64M,share=on" &&
    ok "raw file named .pcow with format=raw starts as raw"

# A pcow image selected by its name, no format=.
expect_start "format chosen by .pcow name" \
    "memory-backend-file,id=pm,mem-path=$img,share=on" "" 'info memdev' &&
    if grep -Eq 'size: +67108864' <<< "$out"; then
        ok "format chosen by .pcow name: size from the image"
    else
        fail "format chosen by .pcow name: size not from the image: $out"
    fi

# --- format=raw and no format: upstream behaviour ---------------------------
expect_start "format=raw" \
    "memory-backend-file,id=pm,mem-path=$raw,format=raw,size=64M,share=on" \
    "" 'info memdev' &&
    if grep -Eq 'size: +67108864' <<< "$out"; then
        ok "format=raw with a raw file starts (upstream)"
    else
        fail "format=raw: unexpected info memdev: $out"
    fi
expect_start "no format, raw file" \
    "memory-backend-file,id=pm,mem-path=$raw,size=64M,share=off" &&
    ok "no format, raw file, share=off starts (upstream)"
expect_refusal "format=raw without size (upstream message)" \
    "memory-backend-file,id=pm,mem-path=$raw,format=raw,share=on" \
    "Parameter 'size' is missing"
expect_refusal "memory-backend-ram without size (upstream message)" \
    "memory-backend-ram,id=pm" "Parameter 'size' is missing"

# --- prealloc=on must not fill the thin image -------------------------------
big=$tmp/big.pcow
"$PCOW_IMG" create -q -f pcow "$big" 1G
before=$(disk_bytes "$big")
alloc_before=$(json_field "$big" actual-size)
if expect_start "prealloc=on" \
        "memory-backend-file,id=pm,mem-path=$big,format=pcow,share=on,prealloc=on"; then
    after=$(disk_bytes "$big")
    # The pre-allocation pool may reserve a few clusters; 1 GiB would mean
    # every hole was touched.
    if [ $((after - before)) -lt $((32 * 1024 * 1024)) ]; then
        ok "prealloc=on: disk usage $before -> $after bytes (image stays thin;" \
           "pcow-img actual-size was $alloc_before, now $(json_field "$big" actual-size))"
    else
        fail "prealloc=on grew the image from $before to $after bytes"
    fi
fi

# --- readonly=on ---------------------------------------------------------------
sum_before=$(md5sum < "$img")
if expect_start "readonly=on" \
        "memory-backend-file,id=pm,mem-path=$img,format=pcow,share=on,readonly=on" \
        nvdimm,id=nv0,memdev=pm,unarmed=on 'info memory-devices'; then
    if [ "$(md5sum < "$img")" = "$sum_before" ]; then
        ok "readonly=on starts (unarmed nvdimm) and leaves the image unchanged"
    else
        fail "readonly=on changed the image file"
    fi
fi
run_qemu "memory-backend-file,id=pm,mem-path=$img,format=pcow,share=on,readonly=on" \
    nvdimm,id=nv0,memdev=pm
if [ "$rc" -eq 1 ] && [[ "$err" == *unarmed* ]]; then
    ok "readonly=on with an armed nvdimm is refused (upstream nvdimm rule)"
else
    fail "readonly=on with an armed nvdimm: rc=$rc, stderr: $err"
fi
# virtio-pmem has no read-only mode: the guest saw a writable disk and its
# writes were dropped silently.  Refused for pcow, with one line naming the
# -device option.  Raw keeps upstream behaviour (starts; docs/pcow.rst).
run_qemu "memory-backend-file,id=pm,mem-path=$img,format=pcow,share=on,readonly=on" \
    virtio-pmem-pci,id=vp0,memdev=pm
if [ "$rc" -eq 1 ] && [ "$(printf '%s\n' "$err" | grep -c .)" -eq 1 ] &&
   [[ "$err" == "$qname: -device virtio-pmem-pci,"*": memdev pm is a "*"read-only pcow image"*"unarmed=on"* ]]; then
    ok "readonly=on with virtio-pmem is refused: $err"
else
    fail "readonly=on with virtio-pmem: rc=$rc, stderr: $err"
fi
expect_start "readonly=on raw with virtio-pmem (upstream)" \
    "memory-backend-file,id=pm,mem-path=$raw,format=raw,size=64M,share=on,readonly=on" \
    virtio-pmem-pci,id=vp0,memdev=pm &&
    ok "readonly=on raw with virtio-pmem starts (upstream behaviour)"
# virtio-mem on a pcow backend: the region already reports the image's
# holes (hostmem-pcow-rdm.c), and a second RamDiscardManager used to abort
# QEMU (assertion in memory_region_set_ram_discard_manager).  One line.
run_qemu "$base_opts" virtio-mem-pci,id=vm0,memdev=pm
if [ "$rc" -eq 1 ] && [ "$(printf '%s\n' "$err" | grep -c .)" -eq 1 ] &&
   [[ "$err" == "$qname: -device virtio-mem-pci,"*": 'memdev' property "*"a pcow image manages its holes): pm" ]]; then
    ok "virtio-mem on a pcow backend is refused: $err"
else
    fail "virtio-mem on a pcow backend: rc=$rc, stderr: $err"
fi

# --- locking: a second QEMU, and pcow-img, while the first runs -------------
fifo=$tmp/hmp
mkfifo "$fifo"
"$QEMU" "${machine[@]}" -monitor stdio -object "$base_opts" \
    -device nvdimm,id=nv0,memdev=pm <"$fifo" >"$tmp/first.out" 2>"$tmp/first.err" &
first=$!
bg_pids+=("$first")
exec 9>"$fifo"          # keep the first QEMU's monitor open
for _ in $(seq 100); do
    grep -q '(qemu)' "$tmp/first.out" 2>/dev/null && break
    kill -0 "$first" 2>/dev/null || break
    sleep 0.1
done
if ! grep -q '(qemu)' "$tmp/first.out"; then
    fail "first QEMU did not start: $(cat "$tmp/first.err")"
else
    expect_refusal "image locked by another QEMU" "$base_opts" "$img"
    if [[ "$err" != *"in use"* && "$err" != *"lock"* ]]; then
        fail "locked image: message does not say the image is in use: $err"
    fi
    if "$PCOW_IMG" snapshot -c s1 "$img" >"$tmp/snap.out" 2>&1; then
        fail "pcow-img snapshot succeeded on an image QEMU is using"
    else
        ok "pcow-img refuses to write an image QEMU is using:" \
           "$(head -1 "$tmp/snap.out")"
    fi
    if [ "$(json_field "$img" dirty-flag)" = True ]; then
        ok "running QEMU holds the in-use flag (info -U: dirty-flag true)"
    else
        fail "running QEMU: in-use flag not set"
    fi

    # SIGTERM closes the image cleanly.
    kill -TERM "$first"
    for _ in $(seq 100); do
        kill -0 "$first" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$first" 2>/dev/null; then
        fail "first QEMU did not exit on SIGTERM"
        kill -KILL "$first"
    fi
    wait "$first" 2>/dev/null
    if [ "$(json_field "$img" dirty-flag)" = False ]; then
        ok "SIGTERM leaves the image clean (dirty-flag false)"
    else
        fail "SIGTERM left the image dirty"
    fi
    if "$PCOW_IMG" snapshot -c s1 "$img" >"$tmp/snap.out" 2>&1; then
        ok "after SIGTERM, pcow-img can write the image (lock released)"
    else
        fail "after SIGTERM, pcow-img snapshot failed: $(cat "$tmp/snap.out")"
    fi
fi
exec 9>&-

# object_add opens the image, object_del closes it (in-use flag cleared,
# lock released) while QEMU keeps running.
hot=$tmp/hot.pcow
"$PCOW_IMG" create -q -f pcow "$hot" 64M
hmp=$tmp/hmp2
mkfifo "$hmp"
"$QEMU" "${machine[@]}" -monitor stdio <"$hmp" >"$tmp/hot.out" 2>"$tmp/hot.err" &
hotq=$!
bg_pids+=("$hotq")
exec 8>"$hmp"
echo "object_add memory-backend-file,id=pm2,mem-path=$hot,format=pcow,share=on" >&8
for _ in $(seq 50); do
    [ "$(json_field "$hot" dirty-flag)" = True ] && break
    sleep 0.1
done
if [ "$(json_field "$hot" dirty-flag)" = True ]; then
    ok "object_add opens the image (in-use flag set)"
else
    fail "object_add: image not in use: $(cat "$tmp/hot.out" "$tmp/hot.err")"
fi
echo "object_del pm2" >&8
for _ in $(seq 50); do
    [ "$(json_field "$hot" dirty-flag)" = False ] && break
    sleep 0.1
done
if [ "$(json_field "$hot" dirty-flag)" = False ] &&
   "$PCOW_IMG" snapshot -c after-del "$hot" >"$tmp/snap2.out" 2>&1; then
    ok "object_del closes the image (clean, lock released)"
else
    fail "object_del: image still in use: $(cat "$tmp/snap2.out")"
fi
echo quit >&8
exec 8>&-
wait "$hotq"
[ $? -eq 0 ] || fail "QEMU with object_add/object_del did not quit cleanly"

# An image pcow-img holds for writing is refused by QEMU: hold a write lock
# the way libpcow does (an OFD write lock on byte 0) with python.
python3 - "$img" >"$tmp/lock.out" 2>&1 <<'EOF' &
import fcntl, os, struct, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
# struct flock: l_type, l_whence, l_start, l_len, l_pid (F_OFD_SETLK = 37)
fl = struct.pack('hhqqi', fcntl.F_WRLCK, 0, 0, 1, 0)
fcntl.fcntl(fd, 37, fl)
print("locked", flush=True)
time.sleep(30)
EOF
locker=$!
bg_pids+=("$locker")
for _ in $(seq 50); do
    grep -q locked "$tmp/lock.out" 2>/dev/null && break
    sleep 0.1
done
if grep -q locked "$tmp/lock.out"; then
    expect_refusal "image locked by a writer" "$base_opts" "$img"
else
    fail "could not take a test lock: $(cat "$tmp/lock.out")"
fi
kill "$locker" 2>/dev/null
wait "$locker" 2>/dev/null

# --- mem-path that is not a regular file: refused at once -----------------
# open(2) of a FIFO used to block QEMU forever (readonly=on at start, and at
# object_add, freezing the monitor); run_qemu's timeout turns a hang into a
# failure.
mkfifo "$tmp/fifo.pcow"
mkdir "$tmp/dir.pcow"
for p in "$tmp/fifo.pcow" "$tmp/dir.pcow" /dev/zero; do
    for ro in "" ",readonly=on"; do
        obj="memory-backend-file,id=pm,mem-path=$p,format=pcow,share=on$ro"
        run_qemu "$obj" "nvdimm,id=nv0,memdev=pm${ro:+,unarmed=on}"
        if [ "$rc" -eq 1 ] && [ "$(printf '%s\n' "$err" | grep -c .)" -eq 1 ] &&
           [[ "$err" == *"$p: cannot open: "*", not a regular file"* ]]; then
            ok "mem-path $p${ro:+ (readonly)}: $err"
        else
            fail "mem-path $p${ro:+ (readonly)}: rc=$rc, stderr: $err"
        fi
    done
done
# An image whose raw base became a FIFO
truncate -s 64M "$tmp/fbase.raw"
"$PCOW_IMG" create -q -b fbase.raw -F raw "$tmp/fov.pcow"
rm "$tmp/fbase.raw"
mkfifo "$tmp/fbase.raw"
expect_refusal "base is a FIFO" \
    "memory-backend-file,id=pm,mem-path=$tmp/fov.pcow,format=pcow,share=on,readonly=on" \
    "$tmp/fov.pcow" "a FIFO, not a regular file or block device"
# object_add of a FIFO fails at once; QEMU keeps running
run_qemu "$base_opts" "" \
    "object_add memory-backend-file,id=pm2,mem-path=$tmp/fifo.pcow,format=pcow,share=on,readonly=on
info memdev"
if [ "$rc" -eq 0 ] && [[ "$out" == *"a FIFO, not a regular file"* ]] &&
   grep -Eq 'size: +67108864' <<< "$out"; then
    ok "object_add of a FIFO: refused at once, QEMU runs on"
else
    fail "object_add of a FIFO: rc=$rc, stdout: $out, stderr: $err"
fi

echo "$((count - fails))/$count checks passed"
[ "$fails" -eq 0 ]
