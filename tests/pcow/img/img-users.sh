#!/bin/bash
# pcow-img info: "in use by", the processes that have an image open now
# (from /proc/PID/fdinfo) and through which of their images: the clones of
# a template with their snapshot, an overlay, or the image itself.  Nothing
# once they exit; odd descriptors and processes that come and go during
# the scan change nothing; processes it may not inspect are counted.  No
# scan when nobody holds the image's lock; the scan touches no other
# process's files (a bystander's, a stopped FUSE daemon's).
. "$(dirname "$0")/common.sh"

# The kernel names files by their real path
RT=$(pwd -P)

# uses JSON: "pid type filename snapshot-name" of each use, sorted
uses() {
    json_get "$1" '"\n".join(sorted(" ".join(str(x) for x in
        (u["pid"], t["type"], t.get("filename", "-"),
         t.get("snapshot-name", "-")))
        for u in d["in-use-by"] for t in u["through"]))'
}

# no_users: info of tmpl.pcow shows nobody, and no advice either: nobody
# holds its lock, so info inspected no process
no_users() {
    expect 0 "$IMG" info --output=json tmpl.pcow
    equal "$(json_get "$OUT" 'd["in-use-by"]')" "[]" "$1: JSON in-use-by"
    equal "$(json_get "$OUT" 'd["in-use-uninspected"]')" 0 \
        "$1: JSON in-use-uninspected"
    expect 0 "$IMG" info tmpl.pcow
    not_contains "$OUT" "in use by" "$1: no in-use block"
}

# wait_ready FILE: a background python holder printed "ready"
wait_ready() {
    for _ in $(seq 50); do
        grep -q ready "$1" 2>/dev/null && return
        sleep 0.1
    done
    fail "python holder did not start ($1)"
}

# trace_info ARGS...: pcow-img info under strace, its file system calls in
# trace.log (\$OUT, \$RC as run sets them).  LeakSanitizer cannot run
# under ptrace (a sanitizer build's info would report a fatal error): the
# traced run leaves leak checks to the untraced runs of this test.
TRACED="open,openat,stat,lstat,newfstatat,statx,readlink,readlinkat,access"
trace_info() {
    ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" \
        run strace -f -qq -o trace.log -e trace="$TRACED" "$IMG" info "$@"
}

expect 0 "$IMG" create -q -o cluster_size=64K tmpl.pcow 8M
"$HELPER" write tmpl.pcow 0 64K 0x11
expect 0 "$IMG" snapshot -c gold tmpl.pcow
mkdir vms
expect 0 "$IMG" clone -q tmpl.pcow@gold vms/c1.pcow
expect 0 "$IMG" clone -q tmpl.pcow@gold c2.pcow

no_users "unused template"
expect 0 "$IMG" info tmpl.pcow
contains "$OUT" "snapshot gold (id 1): clones: yes" "has clones"
contains "$OUT" "clones not open now may exist, the template does not \
list them" "says that clones not running are not known"
ok "a template nobody uses: no in-use block, JSON in-use-by []"

hold_image vms/c1.pcow ro
P1=$HOLD_PID
hold_image c2.pcow ro
P2=$HOLD_PID
expect 0 "$IMG" info tmpl.pcow
contains "$OUT" "in use by:
    pid $P1 (pcow-io-helper): clone $RT/vms/c1.pcow of snapshot 'gold'" \
    "first clone's holder"
contains "$OUT" "
    pid $P2 (pcow-io-helper): clone $RT/c2.pcow of snapshot 'gold'" \
    "second clone's holder"
expect 0 "$IMG" info --output=json tmpl.pcow
equal "$(uses "$OUT")" "$(printf '%s\n' \
    "$P1 clone $RT/vms/c1.pcow gold" "$P2 clone $RT/c2.pcow gold" | sort)" \
    "JSON: both holders, their clones and snapshot"
equal "$(json_get "$OUT" \
    '[t["snapshot-id"] for u in d["in-use-by"] for t in u["through"]]')" \
    "['1', '1']" "JSON snapshot ids"
ok "two clones held open by two processes: both pids with their clones"

expect 0 "$IMG" info --backing-chain --output=json vms/c1.pcow
equal "$(json_get "$OUT" '[(u["pid"], u["through"][0]["type"])
                           for u in d[0]["in-use-by"]]')" \
    "[($P1, 'direct')]" "the clone itself: its holder, directly"
equal "$(json_get "$OUT" 'sorted(u["pid"] for u in d[1]["in-use-by"])')" \
    "[$(printf '%s\n' "$P1" "$P2" | sort -n | paste -sd, | sed 's/,/, /')]" \
    "the template in the chain: both holders"
ok "--backing-chain: each image of the chain says who holds it"

kill "$P1" "$P2"
wait "$P1" || fail "holder of c1 failed"
wait "$P2" || fail "holder of c2 failed"
no_users "after the holders exit"
ok "after they exit, none"

expect 0 "$IMG" create -q -b tmpl.pcow -F pcow ov.pcow
hold_image ov.pcow ro
P1=$HOLD_PID
hold_image tmpl.pcow ro
P2=$HOLD_PID
expect 0 "$IMG" info tmpl.pcow
contains "$OUT" "pid $P1 (pcow-io-helper): overlay $RT/ov.pcow
" "an overlay's holder"
contains "$OUT" "pid $P2 (pcow-io-helper): directly
" "a process that opened the template itself"
kill "$P1" "$P2"
wait "$P1" "$P2" || true
ok "a plain overlay's holder, and a direct open"

# One process with a clone and the template itself open: both uses.  A
# clone holds its own descriptor of the template, the direct open another.
python3 - "$RT/c2.pcow" "$RT/tmpl.pcow" >both.out <<'EOF' &
import fcntl, os, sys, time
fds = [os.open(sys.argv[1], os.O_RDONLY), os.open(sys.argv[2], os.O_RDONLY),
       os.open(sys.argv[2], os.O_RDONLY)]
fcntl.lockf(fds[1], fcntl.LOCK_SH, 1, 0)    # libpcow's read lock
print("ready", flush=True)
time.sleep(120)
EOF
BOTH=$!
CLEANUP_CMDS+=("kill $BOTH 2>/dev/null")
for _ in $(seq 50); do
    grep -q ready both.out 2>/dev/null && break
    sleep 0.1
done
grep -q ready both.out || fail "python holder did not start"
expect 0 "$IMG" info tmpl.pcow
contains "$OUT" "pid $BOTH (python3): clone $RT/c2.pcow of snapshot 'gold', \
directly
" "a clone and a direct open in one process"
kill "$BOTH"
wait "$BOTH" 2>/dev/null || true
ok "one process using the template through a clone and directly"

# A process with odd descriptors: a socket, a pipe, a FIFO, a deleted file,
# a directory, /dev/null, and the template opened by plain open(2)
mkfifo fifo
python3 - "$RT/tmpl.pcow" >odd.out <<'EOF' &
import fcntl, os, socket, sys, time
fds = [socket.socket(), os.pipe(), os.open("fifo", os.O_RDWR),
       os.open("gone", os.O_RDWR | os.O_CREAT), os.open(".", os.O_RDONLY),
       os.open("/dev/null", os.O_RDONLY), os.open(sys.argv[1], os.O_RDONLY)]
fcntl.lockf(fds[-1], fcntl.LOCK_SH, 1, 0)
os.unlink("gone")
print("ready", flush=True)
time.sleep(120)
EOF
ODD=$!
CLEANUP_CMDS+=("kill $ODD 2>/dev/null")
for _ in $(seq 50); do
    grep -q ready odd.out 2>/dev/null && break
    sleep 0.1
done
grep -q ready odd.out || fail "python holder did not start"
expect 0 "$IMG" info --output=json tmpl.pcow
equal "$(uses "$OUT")" "$ODD direct - -" "odd descriptors: just a direct use"
kill "$ODD"
wait "$ODD" 2>/dev/null || true
ok "sockets, pipes, FIFOs, deleted files: skipped, no hang"

# Processes starting and exiting while info scans /proc
hold_image vms/c1.pcow ro
P1=$HOLD_PID
(while :; do /bin/true; done) &
CHURN=$!
CLEANUP_CMDS+=("kill $CHURN 2>/dev/null")
for _ in $(seq 5); do
    expect 0 "$IMG" info --output=json tmpl.pcow
    equal "$(uses "$OUT")" "$P1 clone $RT/vms/c1.pcow gold" "under churn"
done
kill "$CHURN"
wait "$CHURN" 2>/dev/null || true
ok "processes exiting during the scan: no failure, same answer"

# Not root: other users' processes are counted, not silently dropped
if [ "$(id -u)" -eq 0 ] && command -v setpriv >/dev/null; then
    chmod 755 "$T"
    chmod 644 tmpl.pcow
    NOBODY=(setpriv --reuid=65534 --regid=65534 --clear-groups)
    if "${NOBODY[@]}" "$IMG" --version >/dev/null 2>&1; then
        expect 0 "${NOBODY[@]}" "$IMG" info tmpl.pcow
        not_contains "$OUT" "pid $P1" "root's holder is not shown"
        contains "$OUT" "in use by: none found, but" "none found"
        contains "$OUT" "could not be inspected: run as root" "says why"
        expect 0 "${NOBODY[@]}" "$IMG" info --output=json tmpl.pcow
        [ "$(json_get "$OUT" 'd["in-use-uninspected"]')" -ge 1 ] ||
            fail "JSON in-use-uninspected is 0"
        ok "processes it may not inspect are counted, with the advice"
    else
        echo "# skipped the unprivileged check: nobody cannot run $IMG"
    fi
else
    echo "# skipped the unprivileged check: not root, or no setpriv"
fi
release_image

# /proc mounted with hidepid=invisible hides other users' processes: they
# cannot be counted, so info says so (a private /proc in new mount and pid
# namespaces; the host's /proc is left alone)
if [ "$(id -u)" -eq 0 ] && command -v setpriv >/dev/null &&
   unshare -mpf --mount-proc true 2>/dev/null; then
    NOBODY="setpriv --reuid=65534 --regid=65534 --clear-groups"
    cat >ns.sh <<EOF
mount -o remount,hidepid=invisible /proc || exit 3
"$HELPER" hold vms/c1.pcow ro >ns-hold.out &
for _ in \$(seq 50); do grep -q holding ns-hold.out && break; sleep 0.1; done
$NOBODY "$IMG" info tmpl.pcow >ns-info.out
$NOBODY "$IMG" info --output=json tmpl.pcow >ns-info.json
kill %1
EOF
    run unshare -mpf --mount-proc bash ns.sh
    if [ "$RC" -eq 3 ]; then
        echo "# skipped the hidepid check: cannot remount /proc"
    else
        equal "$RC" 0 "namespace script: $ERR"
        OUT=$(cat ns-info.out)
        not_contains "$OUT" "pid " "the hidden holder is not shown"
        contains "$OUT" "in use by: none found, but /proc hides other \
users' processes (hidepid): run as root" "hidepid said"
        equal "$(json_get "$(cat ns-info.json)" 'd["in-use-hidden"]')" \
            True "JSON in-use-hidden"
        ok "/proc with hidepid: info says that it cannot see every process"
    fi
else
    echo "# skipped the hidepid check: not root, or no unshare"
fi

# Nobody holds the image's lock: nobody running depends on it, and info
# inspects no process at all (no /proc listing, no /proc/PID access).  A
# plain open(2) without a lock does not count.
python3 - "$RT/tmpl.pcow" >nolock.out <<'EOF' &
import os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
print("ready", flush=True)
time.sleep(120)
EOF
NOLOCK=$!
CLEANUP_CMDS+=("kill $NOLOCK 2>/dev/null")
wait_ready nolock.out
expect 0 "$IMG" info tmpl.pcow
not_contains "$OUT" "in use by" "nobody holds the lock: no in-use block"
if command -v strace >/dev/null; then
    trace_info tmpl.pcow
    equal "$RC" 0 "info under strace: $ERR"
    not_contains "$OUT" "in use by" "under strace: no in-use block"
    equal "$(grep -E '"/proc(/[0-9]+(/[^"]*)?)?"' trace.log || true)" "" \
        "no /proc scan when nobody holds the lock"
    ok "an image nobody holds the lock of: info looks at no process"
else
    echo "# skipped the no-scan check: no strace"
fi
kill "$NOLOCK"
wait "$NOLOCK" 2>/dev/null || true

# Not root, nobody holding the image: no "could not be inspected" advice
NOBODY=(setpriv --reuid=65534 --regid=65534 --clear-groups)
if [ "$(id -u)" -eq 0 ] && command -v setpriv >/dev/null &&
   "${NOBODY[@]}" "$IMG" --version >/dev/null 2>&1; then
    expect 0 "${NOBODY[@]}" "$IMG" info tmpl.pcow
    not_contains "$OUT" "in use by" "unprivileged, nobody holds it"
    ok "not root, image not held: no advice to run as root"
else
    echo "# skipped the unprivileged no-holder check"
fi

# While someone holds the image, the scan reads other processes' fdinfo
# only: it never stats, opens or resolves the files of a process that does
# not hold the image (a FIFO, a file under a directory closed since).
hold_image vms/c1.pcow ro
P1=$HOLD_PID
mkdir closed
echo secret >closed/secret
python3 - >bystander.out <<'EOF' &
import os, time
fds = [os.open("fifo", os.O_RDWR), os.open("closed/secret", os.O_RDONLY)]
print("ready", flush=True)
time.sleep(120)
EOF
BY=$!
CLEANUP_CMDS+=("kill $BY 2>/dev/null")
wait_ready bystander.out
chmod 000 closed
if command -v strace >/dev/null; then
    trace_info --output=json tmpl.pcow
    equal "$RC" 0 "info under strace: $ERR"
    equal "$(uses "$OUT")" "$P1 clone $RT/vms/c1.pcow gold" \
        "the holder found"
    equal "$(grep -E "\"/proc/$BY/fd/|fifo|secret" trace.log || true)" "" \
        "no call on the bystander's files"
    [ "$(grep -c "\"/proc/$BY/fdinfo/" trace.log)" -ge 2 ] ||
        fail "the bystander's fdinfo was not read"
    ok "the scan identifies a process's files by fdinfo, touching none"
else
    echo "# skipped the bystander check: no strace"
fi
kill "$BY"
wait "$BY" 2>/dev/null || true
chmod 755 closed

# A file behind a FUSE daemon that stopped answering (as a hung NFS hard
# mount): a process that holds such a file, even one holding the image
# too, does not block info.  The daemon speaks /dev/fuse itself.
cat >stuckfs.py <<'EOF'
import ctypes, errno, os, struct, sys
fd = os.open("/dev/fuse", os.O_RDWR)
libc = ctypes.CDLL(None, use_errno=True)
opts = ("fd=%d,rootmode=40000,user_id=0,group_id=0" % fd).encode()
if libc.mount(b"stuckfs", sys.argv[1].encode(), b"fuse", 0, opts) != 0:
    print("cannot mount:", os.strerror(ctypes.get_errno()), flush=True)
    sys.exit(3)
print("mounted", flush=True)

def attr(ino):
    mode = 0o40755 if ino == 1 else 0o100644
    return struct.pack("<6Q10I", ino, 0, 0, 0, 0, 0, 0, 0, 0, mode, 1,
                       0, 0, 0, 4096, 0)

def reply(unique, err=0, body=b""):
    os.write(fd, struct.pack("<IiQ", 16 + len(body), -err, unique) + body)

while True:
    try:
        buf = os.read(fd, 1 << 20)
    except OSError as e:
        if e.errno == errno.ENODEV:
            break
        continue
    ln, op, unique, node = struct.unpack_from("<IIQQ", buf)
    if op == 26:                        # INIT
        reply(unique, 0, struct.pack("<4I2H2I2HI28x", 7, 31, 0, 0, 16, 12,
                                     65536, 1, 0, 0, 0))
    elif op == 1:                       # LOOKUP: only "f" in the root
        if node == 1 and buf[40:ln].split(b"\0")[0] == b"f":
            reply(unique, 0, struct.pack("<4Q2I", 2, 0, 0, 0, 0, 0) +
                  attr(2))
        else:
            reply(unique, errno.ENOENT)
    elif op == 3:                       # GETATTR, never cached
        reply(unique, 0, struct.pack("<QII", 0, 0, 0) + attr(node))
    elif op in (14, 27):                # OPEN, OPENDIR
        reply(unique, 0, struct.pack("<QII", 0, 0, 0))
    elif op in (2, 36, 42):             # FORGET, INTERRUPT, BATCH_FORGET
        pass
    elif op in (18, 25, 29):            # RELEASE, FLUSH, RELEASEDIR
        reply(unique)
    else:
        reply(unique, errno.ENOSYS)
EOF
mkdir stuck
FUSED=
if [ "$(id -u)" -eq 0 ] && [ -c /dev/fuse ]; then
    python3 stuckfs.py "$RT/stuck" >stuckfs.out 2>&1 &
    FUSED=$!
    # Let the daemon answer (the holders' closes), then unmount
    CLEANUP_CMDS+=("kill -CONT $FUSED 2>/dev/null; sleep 0.2;
                    umount -l $RT/stuck 2>/dev/null; kill $FUSED 2>/dev/null")
    for _ in $(seq 50); do
        grep -q . stuckfs.out 2>/dev/null && break
        sleep 0.1
    done
fi
if [ -n "$FUSED" ] && grep -q mounted stuckfs.out; then
    python3 - "$RT/stuck/f" "$RT/tmpl.pcow" >stuck-hold.out <<'EOF' &
import fcntl, os, sys, time
fds = [os.open(sys.argv[1], os.O_RDONLY), os.open(sys.argv[2], os.O_RDONLY)]
fcntl.lockf(fds[1], fcntl.LOCK_SH, 1, 0)
print("ready", flush=True)
time.sleep(120)
EOF
    SH=$!
    CLEANUP_CMDS+=("kill $SH 2>/dev/null")
    python3 - "$RT/stuck/f" >stuck-by.out <<'EOF' &
import os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
print("ready", flush=True)
time.sleep(120)
EOF
    SB=$!
    CLEANUP_CMDS+=("kill $SB 2>/dev/null")
    wait_ready stuck-hold.out
    wait_ready stuck-by.out
    kill -STOP "$FUSED"
    run timeout -s KILL 20 "$IMG" info --output=json tmpl.pcow
    kill -CONT "$FUSED"
    equal "$RC" 0 "info with files behind a stopped FUSE daemon: $ERR"
    equal "$(uses "$OUT")" "$(printf '%s\n' "$P1 clone $RT/vms/c1.pcow gold" \
        "$SH direct - -" | sort)" "holders found, the stuck file skipped"
    kill "$SH" "$SB"
    wait "$SH" "$SB" 2>/dev/null || true
    ok "files behind a FUSE daemon that stopped answering: no hang"
else
    echo "# skipped the stuck FUSE check: not root, or no FUSE mount" \
         "($(cat stuckfs.out 2>/dev/null))"
fi
release_image

# btrfs: the subvolumes under one mount number their inodes alike, so a
# bystander's file in another subvolume, with the template's inode number,
# is not taken for the template
BT=
if [ "$(id -u)" -eq 0 ] && command -v mkfs.btrfs >/dev/null &&
   truncate -s 256M btrfs.img && mkfs.btrfs -q btrfs.img >/dev/null 2>&1 &&
   mkdir bt && mount -o loop btrfs.img bt 2>/dev/null; then
    BT=$RT/bt
    CLEANUP_CMDS+=("umount -l $BT 2>/dev/null")
fi
if [ -n "$BT" ] && btrfs -q subvolume create bt/a >/dev/null &&
   btrfs -q subvolume create bt/b >/dev/null; then
    expect 0 "$IMG" create -q bt/a/t.pcow 1M
    want=$(stat -c %i bt/a/t.pcow)
    for i in $(seq 20); do
        : >"bt/b/x$i"
        [ "$(stat -c %i "bt/b/x$i")" = "$want" ] && break
    done
    equal "$(stat -c %i "bt/b/x$i")" "$want" "a file with the same inode"
    hold_image bt/a/t.pcow ro
    python3 - "$BT/b/x$i" >bt.out <<'EOF' &
import os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
print("ready", flush=True)
time.sleep(120)
EOF
    BTBY=$!
    CLEANUP_CMDS+=("kill $BTBY 2>/dev/null")
    wait_ready bt.out
    expect 0 "$IMG" info --output=json bt/a/t.pcow
    equal "$(uses "$OUT")" "$HOLD_PID direct - -" \
        "the holder only, not the other subvolume's file"
    kill "$BTBY"
    wait "$BTBY" 2>/dev/null || true
    release_image
    umount "$BT"
    ok "btrfs subvolumes: a file with the template's inode number elsewhere"
else
    echo "# skipped the btrfs check: not root, no mkfs.btrfs or no loop mount"
fi

finish
