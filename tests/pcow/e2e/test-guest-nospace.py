#!/usr/bin/env python3
"""A full host file system stalls the guest, never kills QEMU (issue 14).

The image lives on a small tmpfs mounted by the test; the guest writes
256 blocks of 4 KiB, each in its own 64 KiB cluster (16 MiB of clusters),
far past the free space.

hole:  8 MiB tmpfs, nospace= not given (stall).  Asserted: PCOW_IO_ERROR
       (nospace true, action stall) arrives over QMP while QEMU runs;
       query-pcow shows held faults and info pcow says so; the guest has
       not finished; pcow-snapshot-create and savevm are refused at once
       and the VM keeps running (they would stop it).  Then `mount -o
       remount,size=128m`: one PCOW_IO_RESUMED follows; the guest
       finishes by itself, reads every block back (page cache dropped);
       exactly one event; the host reads every block back (convert -O
       raw); the image is clean.
stop:  as hole, but QMP stop while the fault is held: no answer for 5 s
       (QEMU alive); after the remount stop completes (STOP event), the
       VM is paused, cont resumes it, and the guest finishes as above.
cow:   the same blocks written first (convert from raw), snapshot s1,
       a filler file takes the free space; the guest's writes are
       copy-on-write faults.  Space comes back by removing the filler.
       Also: s1 still holds the first data (snapshot -a s1 at the end).
fail:  8 MiB tmpfs, nospace=fail: today's behaviour, QEMU dies of
       SIGSEGV naming the image; after `check -r leaks` the image is
       clean and consistent.

Arguments: the cases to run (default all).
"""

import importlib.util
import os
import select
import signal
import subprocess
import sys
import time

spec = importlib.util.spec_from_file_location(
    "common", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           "test-guest-common.py"))
common = importlib.util.module_from_spec(spec)
spec.loader.exec_module(common)
MiB, KiB = common.MiB, common.KiB
guest = common.guest

NBLK = 256
BLK = 4 * KiB
# Block i: its own cluster, at a varying 4 KiB slot inside it
SEEK = [(i * 3 + 1) * 16 + i % 16 for i in range(NBLK)]


def payload(tag):
    return common.pattern(("nospace", tag), NBLK * BLK)


def write_script():
    offs = " ".join(str(s) for s in SEEK)
    return common.GUEST_PRELUDE + f"""
echo WRITING
i=0
for o in {offs}; do
    dd if=/data/payload of=/dev/pmem0 bs=4096 skip=$i seek=$o count=1 \\
        conv=notrunc 2>/dev/null || fail write $o
    i=$((i + 1))
done
sync
echo WROTE
echo 3 > /proc/sys/vm/drop_caches
for o in {offs}; do
    dd if=/dev/pmem0 bs=4096 skip=$o count=1 2>/dev/null
done > /tmp/back
echo "READBACK $(md5sum < /tmp/back | cut -d' ' -f1)"
"""


def mount_tmpfs(t, size):
    d = t.tmp / "fs"
    d.mkdir(exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}",
                        "pcow-e2e-nospace", str(d)])
    if r.returncode != 0:
        t.fatal(f"cannot mount a tmpfs at {d}")
    return d


def umount(d):
    subprocess.run(["umount", str(d)])


def fill(d):
    """A filler file takes every free byte of the file system of @d."""
    chunk = 1 * MiB
    with open(d / "filler", "wb", buffering=0) as f:
        buf = b"\xf1" * chunk
        while chunk >= 4096:
            try:
                f.write(buf[:chunk])
            except OSError:
                chunk //= 2


def pcow_entry(q):
    return q.execute("query-pcow")[0]


def host_blocks(t, img):
    raw = t.to_raw(img, t.tmp / "check.raw")      # not on the small tmpfs
    with open(raw, "rb") as f:
        data = b""
        for s in SEEK:
            f.seek(s * BLK)
            data += f.read(BLK)
    raw.unlink()
    return data


def resumed_event(t, q, label):
    """Once space is back, one PCOW_IO_RESUMED after the PCOW_IO_ERROR."""
    names = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        q.execute("query-status")   # collects the events meanwhile
        names = [x["event"] for x in q.events
                 if x["event"].startswith("PCOW_IO_")]
        if "PCOW_IO_RESUMED" in names:
            break
        time.sleep(0.2)
    t.check(names == ["PCOW_IO_ERROR", "PCOW_IO_RESUMED"],
            f"{label}: space back: PCOW_IO_RESUMED once, after "
            f"PCOW_IO_ERROR ({names})")


def refused_snapshot(t, q, label):
    """A pcow snapshot would stop the VM, which waits for space: refused
    at once instead of blocking QMP."""
    t0 = time.monotonic()
    try:
        q.execute("pcow-snapshot-create", id="pm0", name="while-held")
        t.check(False, f"{label}: pcow-snapshot-create while a fault is "
                       "held was accepted")
    except guest.QMPError as ex:
        dt = time.monotonic() - t0
        t.check("waits for space" in str(ex) and dt < 3,
                f"{label}: pcow-snapshot-create while a fault is held is "
                f"refused in {dt:.2f} s: {ex}")
    out = q.hmp("savevm while-held")
    t.check("waits for space" in out,
            f"{label}: savevm while a fault is held is refused: "
            f"{out.strip()}")
    st = q.execute("query-status")
    t.check(st["status"] == "running",
            f"{label}: the refused snapshots left the VM running "
            f"({st['status']})")


def stop_while_held(t, g, q, label, free_space):
    """The run-state rule: stop waits for space (a stalled vCPU cannot
    acknowledge a pause), then completes; cont resumes; nothing lost."""
    q.sock.sendall(b'{"execute": "stop"}\n')
    answered, _, _ = select.select([q.sock], [], [], 5)
    t.check(not answered and g.proc.poll() is None,
            f"{label}: stop while a fault is held waits (no answer in 5 s), "
            "QEMU alive")
    free_space()
    t0 = time.monotonic()
    q.sock.settimeout(60)
    got = []
    while not got or "return" not in got[-1]:
        got.append(q._recv())
    dt = time.monotonic() - t0
    t.check(any(m.get("event") == "STOP" for m in got) and dt < 30,
            f"{label}: once space is back, stop completes ({dt:.2f} s, "
            "STOP event)")
    st = q.execute("query-status")
    t.check(st["status"] == "paused", f"{label}: the VM is paused "
            f"({st['status']})")
    q.execute("cont")


def stall_run(t, img, d, label, free_space, expect_held_kind, stop=False):
    """Boot the writer; wait for the event; free space; check all."""
    data = payload(label)
    qmp_path = t.tmp / f"qmp-{label}.sock"
    g = guest.Guest(write_script(), common.nvdimm_args([img]),
                    **common.GUEST_KW, qmp=str(qmp_path),
                    files={"data/payload": data})
    events = []
    with g:
        try:
            q = g.qmp()
            g.wait_for_line(r"^WRITING")
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                e = pcow_entry(q)
                events = [x for x in q.events if x["event"] == "PCOW_IO_ERROR"]
                if events and e["statistics"]["held-faults"] > 0:
                    break
                time.sleep(0.5)
            t.check(len(events) == 1,
                    f"{label}: one PCOW_IO_ERROR event while the guest writes "
                    f"past the free space ({events})")
            if events:
                ev = events[0]["data"]
                t.check(ev["id"] == "pm0" and ev["filename"] == str(img)
                        and ev["nospace"] is True and ev["action"] == "stall",
                        f"{label}: the event names pm0, the image, "
                        f"nospace=true, action=stall ({ev})")
            time.sleep(1)
            e = pcow_entry(q)
            held = e["statistics"]["held-faults"]
            t.check(g.proc.poll() is None and held > 0,
                    f"{label}: QEMU alive, query-pcow answers with "
                    f"{held} held faults ({expect_held_kind})")
            st = q.execute("query-status")
            t.check(st["running"] and st["status"] == "running",
                    f"{label}: the VM is not paused (status {st['status']})")
            t.check(e["nospace"] == "stall",
                    f"{label}: query-pcow nospace = stall")
            hmp = q.hmp("info pcow")
            t.check("faults held" in hmp,
                    f"{label}: info pcow shows the held faults: "
                    + " | ".join(ln.strip() for ln in hmp.splitlines()
                                 if "space" in ln))
            t.check(not any(ln.startswith("WROTE") for ln in g.lines),
                    f"{label}: the guest has not finished its writes")
            refused_snapshot(t, q, label)
            if stop:
                stop_while_held(t, g, q, label, free_space)
            else:
                free_space()
                resumed_event(t, q, label)
            r = g.wait()
        except (guest.GuestError, guest.QMPError, OSError) as ex:
            t.check(False, f"{label}: {ex}")
            r = g.wait()
    t.boots.append((label, r))
    print(f"   [boot {label}] rc={r.rc} qemu_rc={r.qemu_rc} "
          f"total={r.total_time:.1f}s")
    if r.qemu_stderr.strip():
        print("   qemu stderr: " + r.qemu_stderr.strip().replace("\n", "\n   "))
    out = r.output()
    t.check(r.rc == 0 and r.qemu_rc == 0,
            f"{label}: the guest finished after space was freed "
            f"(rc {r.rc}, QEMU exit {r.qemu_rc})")
    t.check(f"READBACK {common.md5(data)}" in out,
            f"{label}: every block reads back in the guest")
    t.check(host_blocks(t, img) == data,
            f"{label}: every block reads back on the host (convert -O raw)")
    t.check_clean(img, f"{label}: after poweroff")
    return data


def t_hole(t, case="hole"):
    """A stall on expansions; case "stop": the VM is stopped meanwhile."""
    d = mount_tmpfs(t, "8m")
    try:
        img = d / f"{case}.pcow"
        t.img("create", img, "64M")
        stall_run(t, img, d, case,
                  lambda: subprocess.run(["mount", "-o", "remount,size=128m",
                                          str(d)], check=True),
                  "expansions", stop=case == "stop")
    finally:
        umount(d)


def t_stop(t):
    t_hole(t, "stop")


def t_cow(t):
    d = mount_tmpfs(t, "40m")
    try:
        img = d / "cow.pcow"
        first = payload("first")
        raw = t.tmp / "first.raw"
        with open(raw, "wb") as f:
            f.truncate(64 * MiB)
            for i, s in enumerate(SEEK):
                f.seek(s * BLK)
                f.write(first[i * BLK:(i + 1) * BLK])
        t.img("convert", "-f", "raw", "-O", "pcow", raw, img)
        raw.unlink()
        t.img("snapshot", "-c", "s1", img)
        fill(d)
        stall_run(t, img, d, "cow", lambda: os.unlink(d / "filler"),
                  "copy-on-writes")
        t.img("snapshot", "-a", "s1", img)
        t.check(host_blocks(t, img) == first,
                "cow: snapshot s1 still holds the first data")
    finally:
        umount(d)


def t_fail(t):
    d = mount_tmpfs(t, "8m")
    try:
        img = d / "fail.pcow"
        t.img("create", img, "64M")
        r = t.boot("fail", write_script(), [(img, "nospace=fail", "")],
                   expect_rc=None, files={"data/payload": payload("fail")})
        t.check(r.rc is None and r.qemu_rc == -signal.SIGSEGV,
                f"fail: QEMU dies of SIGSEGV (exit {r.qemu_rc}, "
                f"guest rc {r.rc})")
        t.check("no space left" in r.qemu_stderr and str(img) in r.qemu_stderr,
                "fail: QEMU's last words name the image and the full disk")
        rc = t.img("check", img, check=False).returncode
        t.check(rc in (0, 3), f"fail: check exits 0 or 3 (leaks only): {rc}")
        t.img("check", "-r", "leaks", img, check=False)
        t.check_clean(img, "fail: after check -r leaks")
    finally:
        umount(d)


def main():
    cases = {"hole": t_hole, "stop": t_stop, "cow": t_cow, "fail": t_fail}
    t = common.Test("guest-nospace")
    for name in sys.argv[1:] or cases:
        cases[name](t)
    t.finish()


if __name__ == "__main__":
    main()
