#!/usr/bin/env python3
"""Internal snapshots of a VM with no disk, only a pcow NVDIMM (TCG; issue 10).

The guest has no block device at all: a 256 MiB pcow NVDIMM (plain RAM
for the guest: written with dd) on a 1 GiB tmpfs of its own.  It counts
in guest RAM (/tmp/cnt, ten times a second) and answers commands on its
second serial port: "w TAG" writes TAG's pattern to region R (1 MiB),
"c" prints the region's md5 (O_DIRECT, the NVDIMM itself is read) and
the counter, "q" exits.

- w A; HMP savevm s1: succeeds without a disk; pcow-img snapshot -l (-U)
  lists s1 with a VM SIZE that is not 0 B and a VM CLOCK, JSON too.
- w B, three seconds pass; HMP loadvm s1: the guest reads A again and its
  counter continues from the snapshot (at least its value before savevm,
  below its value before loadvm: the guest's RAM came from the image).
- loadvm of a pcow snapshot that holds no VM state (QMP pcow-snapshot-
  create) fails naming the image and the backend; nothing changes.
- HMP delvm s1: gone from the image.
- The tmpfs filled up: savevm s2 fails with one line naming pm0 and its
  image (no space for the VM state), the VM runs on, and no snapshot s2
  is left; with space back savevm s3 and delvm s3 work.
- QMP jobs with vmstate=pm0 devices=[] (patches/0024): snapshot-save
  of a vmstate that is neither a block node nor a memory backend fails
  in one line and makes nothing; w D, snapshot-save q1 stores the VM
  state in pm0's image; w E, snapshot-load q1: the guest reads D and its
  counter goes back; snapshot-delete q1: gone from the image.
- Host, after quit: pcow-img check exits 0 with no leaks and no VM state
  clusters; no snapshot is left.
- Guest RAM on pcow, no NVDIMM and no disk (-machine memory-backend= a
  512 MiB pcow image): savevm s1 stores the VM state in that image (its
  RAM left out: the VM SIZE stays below 32 MiB); after B and three
  seconds loadvm s1 brings A and the counter back (the machine reset
  used to copy the -kernel ELF over the reverted RAM: the guest died);
  delvm s1 removes it, the guest runs on; the QMP jobs with vmstate=ram0
  devices=[] do the same (save, w B, load: A; delete); the image checks
  clean.
Env: QEMU, PCOW_IMG.  Exit 0 pass, 77 skip (last line says why), 1 fail.
"""

import importlib.util
import json
import os
import re
import socket
import subprocess
import time

spec = importlib.util.spec_from_file_location(
    "common", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           "test-guest-common.py"))
common = importlib.util.module_from_spec(spec)
spec.loader.exec_module(common)
guest = common.guest
MiB = common.MiB

SIZE = 256 * MiB
R_OFF, R_LEN = 1 * MiB, 1 * MiB

SCRIPT = common.GUEST_PRELUDE + rf"""
pm=/dev/$(pmem_of_size {SIZE}) || fail "no {SIZE}-byte pmem"
( i=0
  while :; do i=$((i + 1)); echo $i > /tmp/cnt; usleep 100000; done ) &
echo READY
while com2_getline; do
    set -- $line
    case "$1" in
    w) yes "pcow-pmonly $2" | head -c {R_LEN} |
       dd of=$pm bs=65536 seek={R_OFF // 65536} iflag=fullblock \
          oflag=direct conv=notrunc,fsync 2>/dev/null || fail "write $2"
       echo "WROTE $2" ;;
    c) echo "SEE $(dd if=$pm bs=65536 skip={R_OFF // 65536} \
          count={R_LEN // 65536} iflag=direct 2>/dev/null |
          md5sum | cut -d' ' -f1) $(cat /tmp/cnt)" ;;
    q) echo BYE; exit 0 ;;
    esac
done
"""


RAM_SCRIPT = common.GUEST_PRELUDE + r'''
( i=0
  while :; do i=$((i + 1)); echo $i > /tmp/cnt; usleep 100000; done ) &
echo READY
while com2_getline; do
    set -- $line
    case "$1" in
    w) yes "pcow-pmonly $2" | head -c 1048576 > /tmp/data
       echo "WROTE $2" ;;
    c) echo "SEE $(md5sum < /tmp/data | cut -d' ' -f1) $(cat /tmp/cnt)" ;;
    q) echo BYE; exit 0 ;;
    esac
done
'''


def region_md5(tag):
    s = f"pcow-pmonly {tag}\n".encode()
    return common.md5((s * (R_LEN // len(s) + 1))[:R_LEN])


def fill(path):
    """Fill the file system holding @path: a file until ENOSPC."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while os.write(fd, bytes(64 * 1024)) > 0:
            pass
    except OSError:
        pass
    os.close(fd)


class Vm:
    """The guest, its control port and its QMP."""

    def __init__(self, t, g, ctl):
        self.t, self.g = t, g
        self.ctl = socket.socket(socket.AF_UNIX)
        self.ctl.connect(str(ctl))
        self.m = g.qmp(timeout=60)
        self.m.sock.settimeout(600)     # savevm under TCG on a busy host

    def send(self, line, expect, timeout=120):
        self.ctl.sendall(line.encode() + b"\n")
        return self.g.wait_for_line(expect, timeout=timeout)

    def see(self):
        """(md5 of the region, the guest's counter)"""
        _, md5, cnt = self.send("c", r"^SEE ").split()
        return md5, int(cnt)

    def hmp(self, cmd):
        out = self.m.hmp(cmd)
        print(f"   (hmp) {cmd} -> {out.strip()!r}")
        return out

    def status(self):
        return self.m.execute("query-status")["status"]

    def job(self, cmd, **args):
        """Run a snapshot-* job to its end; returns its error or None."""
        return common.run_job(self.m, cmd, **args)


def snapshots(t, img):
    """pcow-img snapshot -l -U: {tag: (VM SIZE, VM CLOCK)}; and JSON's list"""
    out = t.img("snapshot", "-U", "-l", img).stdout
    rows = {}
    for ln in out.splitlines():
        m = re.match(r"(\d+)\s+(\S+)\s+([\d.]+ \S*B)\s+\S+ \S+\s+(\S+)\s+--$",
                     ln.strip())
        if m:
            rows[m.group(2)] = (m.group(3), m.group(4))
    return rows, t.info(img).get("snapshots", [])


def main():
    t = common.Test("guest-savevm-pmonly")
    fs = t.tmp / "small"
    fs.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1g", "tmpfs",
                        str(fs)], stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        t.fatal(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        run(t, fs)
    finally:
        subprocess.run(["umount", "-l", str(fs)])
    run_ram(t)
    t.finish()


def run_ram(t):
    """Guest RAM on pcow: the image holds the RAM and the VM state."""
    img, ctl = t.tmp / "ram.pcow", t.tmp / "ctl-ram"
    t.img("create", img, "512M")
    args = (["-object", f"memory-backend-file,id=ram0,mem-path={img},"
             "format=pcow,share=on", "-machine", "memory-backend=ram0"] +
            common.ctl_args(ctl))
    g = guest.Guest(RAM_SCRIPT, args, **dict(common.GUEST_KW, qmp=True))
    with g:
        try:
            g.wait_for_line(r"^READY$")
            vm = Vm(t, g, ctl)
            vm.send("w A", r"^WROTE A$")
            md5, c0 = vm.see()
            out = vm.hmp("savevm s1")
            rows, js = snapshots(t, img)
            size = {x["name"]: x for x in js}.get("s1", {}).get(
                "vm-state-size", 0)
            t.check(out.strip() == "" and 0 < size < 32 * MiB,
                    f"RAM on pcow: savevm s1 ({out.strip()!r}) stores "
                    f"{size / MiB:.1f} MiB of VM state in the RAM's image "
                    f"(rows {rows}; the RAM is not in it)")
            vm.send("w B", r"^WROTE B$")
            time.sleep(3)
            md5b, c1 = vm.see()
            out = vm.hmp("loadvm s1")
            md5l, c2 = vm.see()
            t.check(out.strip() == "" and md5b != md5 and md5l == md5 and
                    c0 <= c2 < c1,
                    f"RAM on pcow: after B, loadvm s1 ({out.strip()!r}): "
                    f"the guest reads A again ({md5l == md5}) and its "
                    f"counter continues from the snapshot: {c2} (it was "
                    f"{c0} before savevm, {c1} before loadvm)")
            vm.hmp("delvm s1")
            rows, _ = snapshots(t, img)
            md5d, c3 = vm.see()
            t.check(not rows and md5d == md5 and c3 > c2,
                    f"RAM on pcow: delvm s1 leaves no snapshot ({rows}); "
                    f"the guest runs on (counter {c2} -> {c3}) and reads A")
            ram_jobs(t, vm, img, md5)
            vm.send("q", r"^BYE$")
        except (guest.GuestError, guest.QMPError, EOFError, OSError) as e:
            t.check(False, f"guest (RAM on pcow): {e}")
            print("\n".join("   # " + ln for ln in g.lines[-30:]))
        r = g.wait(timeout=120)
    t.boots.append(("guest-ram", r))
    t.check(r.rc == 0, f"guest (RAM on pcow) script exit {r.rc}"
            + (f"; QEMU: {r.qemu_stderr.strip()}" if r.rc != 0 else ""))
    t.check_clean(img, "RAM image after poweroff")


def ram_jobs(t, vm, img, md5a):
    """The QMP jobs with vmstate=ram0, the RAM's own backend."""
    err = vm.job("snapshot-save", tag="q1", vmstate="ram0", devices=[])
    _, js = snapshots(t, img)
    size = {x["name"]: x for x in js}.get("q1", {}).get("vm-state-size", 0)
    t.check(err is None and 0 < size < 32 * MiB,
            f"RAM on pcow: snapshot-save q1 vmstate=ram0 devices=[]: "
            f"{err or 'ok'}, {size / MiB:.1f} MiB of VM state in the image")
    vm.send("w B", r"^WROTE B$")
    err = vm.job("snapshot-load", tag="q1", vmstate="ram0", devices=[])
    st = vm.status()
    if st != "running":
        vm.m.execute("cont")        # a failed load leaves the VM stopped
    md5, _ = vm.see()
    err2 = vm.job("snapshot-delete", tag="q1", devices=[])
    rows, _ = snapshots(t, img)
    t.check(err is None and st == "running" and md5 == md5a and
            err2 is None and not rows,
            f"RAM on pcow: after B, snapshot-load q1 vmstate=ram0: "
            f"{err or 'ok'}, VM {st}, the guest reads A ({md5 == md5a}); "
            f"snapshot-delete q1: {err2 or 'ok'}, left {sorted(rows)}")


def run(t, fs):
    img = fs / "pm.pcow"
    t.img("create", img, str(SIZE))
    ctl = t.tmp / "ctl"
    args = common.nvdimm_args([img]) + common.ctl_args(ctl)
    g = guest.Guest(SCRIPT, args, **dict(common.GUEST_KW, qmp=True))
    with g:
        try:
            g.wait_for_line(r"^READY$")
            steps(t, Vm(t, g, ctl), img, fs)
        except (guest.GuestError, guest.QMPError, EOFError, OSError) as e:
            t.check(False, f"guest: {e}")
            print("\n".join("   # " + ln for ln in g.lines[-30:]))
        r = g.wait(timeout=120)
    t.boots.append(("guest", r))
    t.check(r.rc == 0, f"guest script exit {r.rc}")
    t.check_clean(img, "image after poweroff")
    res = json.loads(t.img("check", "--output=json", img,
                           check=False).stdout)
    t.check(res.get("leaks") == 0 and res.get("vm-state-clusters") == 0,
            f"pcow-img check: leaks {res.get('leaks')}, VM state clusters "
            f"{res.get('vm-state-clusters')} (0 and 0)")
    left = [s["name"] for s in t.info(img).get("snapshots", [])]
    t.check(left == [], f"no snapshot left in the image ({left})")


def steps(t, vm, img, fs):
    vm.send("w A", r"^WROTE A$")
    md5, c0 = vm.see()
    t.check(md5 == region_md5("A"), "the guest wrote A")
    out = vm.hmp("savevm s1")
    t.check(out.strip() == "", f"savevm s1 without a disk succeeded "
            f"({out.strip()!r})")
    rows, js = snapshots(t, img)
    size, clock = rows.get("s1", ("", ""))
    t.check(size not in ("", "0 B") and clock != "0000:00:00.000",
            f"pcow-img snapshot -l: s1 with VM SIZE {size!r}, VM CLOCK "
            f"{clock!r} (not 0)")
    j = {s["name"]: s for s in js}.get("s1", {})
    t.check(j.get("vm-state-size", 0) > 0 and
            j.get("vm-clock-sec", 0) + j.get("vm-clock-nsec", 0) > 0,
            f"info --output=json: s1 vm-state-size {j.get('vm-state-size')}"
            f", vm-clock {j.get('vm-clock-sec')} s "
            f"{j.get('vm-clock-nsec')} ns")
    t.note(f"VM state of s1: {j.get('vm-state-size', 0) / MiB:.1f} MiB")

    vm.send("w B", r"^WROTE B$")
    time.sleep(3)
    md5, c1 = vm.see()
    t.check(md5 == region_md5("B") and c1 >= c0 + 20,
            f"then the guest wrote B, counter {c0} -> {c1}")
    out = vm.hmp("loadvm s1")
    t.check(out.strip() == "", f"loadvm s1 succeeded ({out.strip()!r})")
    if vm.status() != "running":
        vm.m.execute("cont")        # a failed loadvm leaves the VM stopped
    md5, c2 = vm.see()
    t.check(md5 == region_md5("A"), "after loadvm s1 the guest reads A")
    t.check(c0 <= c2 < c1, f"... and its counter continues from the "
            f"snapshot: {c2} (it was {c0} before savevm, {c1} before "
            "loadvm)")

    vm.m.execute("pcow-snapshot-create", id="pm0", name="live")
    vm.send("w C", r"^WROTE C$")
    out = vm.hmp("loadvm live")
    st = vm.status()
    if st != "running":
        vm.m.execute("cont")        # a failed loadvm leaves the VM stopped
    md5, _ = vm.see()
    t.check("pm.pcow" in out and "pm0" in out and "no VM state" in out and
            len(out.strip().splitlines()) == 1,
            f"loadvm of a pcow snapshot without VM state fails in one line "
            f"naming the image: {out.strip()!r}")
    t.check(md5 == region_md5("C"), "... and changes nothing (C is still "
            "there)")
    vm.m.execute("pcow-snapshot-delete", id="pm0", name="live")
    vm.hmp("delvm s1")
    rows, _ = snapshots(t, img)
    t.check(not rows, f"delvm s1: no snapshot left in the image ({rows})")

    filler = fs / "filler"
    fill(filler)
    out = vm.hmp("savevm s2")
    lines = out.strip().splitlines()
    t.check(len(lines) == 1 and "pm0" in out and out.count("pm.pcow") == 1
            and out.count("cannot create snapshot 's2'") == 1 and
            "No space left on device" in out,
            f"savevm s2 on a full file system fails in one line naming pm0 "
            f"and its image once: {out.strip()!r}")
    out = vm.hmp("pcow_snapshot_create pm0 q2")
    lines = out.strip().splitlines()
    t.check(len(lines) == 1 and "pm0" in out and out.count("pm.pcow") == 1
            and out.count("snapshot 'q2'") == 1 and
            "No space left on device" in out,
            f"pcow_snapshot_create q2 on a full file system fails in one "
            f"line naming pm0, its image and the snapshot once: "
            f"{out.strip()!r}")
    rows, _ = snapshots(t, img)
    t.check(vm.status() == "running" and not rows,
            f"... the VM runs on ({vm.status()}) and no snapshot is left "
            f"({sorted(rows)})")
    filler.unlink()
    out = vm.hmp("savevm s3")
    rows, _ = snapshots(t, img)
    t.check(out.strip() == "" and "s3" in rows,
            f"with space back savevm s3 works ({out.strip()!r}, {rows})")
    vm.hmp("delvm s3")
    md5, _ = vm.see()
    t.check(md5 == region_md5("C"), "the guest reads C at the end")
    qmp_jobs(t, vm, img)
    vm.send("q", r"^BYE$")


def qmp_jobs(t, vm, img):
    """The QMP jobs name the memory backend for the VM state."""
    err = vm.job("snapshot-save", tag="q0", vmstate="nosuch", devices=[])
    rows, _ = snapshots(t, img)
    t.check(err is not None and "'nosuch'" in err and "block node" in err
            and "memory backend" in err and len(err.splitlines()) == 1 and
            not rows and vm.status() == "running",
            f"snapshot-save vmstate=nosuch fails in one line naming both "
            f"kinds of name: {err!r}; no snapshot is made ({sorted(rows)}), "
            f"the VM runs on ({vm.status()})")

    vm.send("w D", r"^WROTE D$")
    md5, c0 = vm.see()
    err = vm.job("snapshot-save", tag="q1", vmstate="pm0", devices=[])
    rows, _ = snapshots(t, img)
    size = rows.get("q1", ("", ""))[0]
    t.check(err is None and size not in ("", "0 B"),
            f"snapshot-save q1 vmstate=pm0 devices=[]: {err or 'ok'}; the "
            f"image lists q1 with VM SIZE {size!r}")

    vm.send("w E", r"^WROTE E$")
    time.sleep(2)
    md5e, c1 = vm.see()
    err = vm.job("snapshot-load", tag="q1", vmstate="pm0", devices=[])
    st = vm.status()
    if st != "running":
        vm.m.execute("cont")        # a failed load leaves the VM stopped
    md5l, c2 = vm.see()
    t.check(err is None and st == "running" and md5e == region_md5("E") and
            md5l == md5 == region_md5("D") and c0 <= c2 < c1,
            f"snapshot-load q1 vmstate=pm0: {err or 'ok'}, VM {st}; after "
            f"E the guest reads D again ({md5l == region_md5('D')}), counter "
            f"{c2} (it was {c0} at the save, {c1} before the load)")

    err = vm.job("snapshot-delete", tag="q1", devices=[])
    rows, _ = snapshots(t, img)
    md5, c3 = vm.see()
    t.check(err is None and not rows and md5 == region_md5("D") and c3 > c2,
            f"snapshot-delete q1 devices=[]: {err or 'ok'}, no snapshot "
            f"left ({sorted(rows)}); the guest runs on and reads D")


if __name__ == "__main__":
    main()
