#!/usr/bin/env python3
"""Internal snapshots of the whole VM with a pcow NVDIMM (TCG; issue 10).

A guest with a qcow2 disk (if=none, it holds the vmstate) and a 1 GiB pcow
NVDIMM, driven by commands on its second serial port: "w TAG REGION"
writes TAG's pattern there, "c" prints the md5 of every region (after
dropping the page cache, with O_DIRECT, so the NVDIMM itself is read;
writes use O_DIRECT too, or the vmstate would carry the data as page
cache), "q" exits.
Regions: R0 and R1 (64 KiB each), BIG (32 MiB).

- w A R0, w A BIG; HMP savevm s1: the pcow image has snapshot s1 (query-
  pcow), the vmstate grew by far less than BIG since a reference savevm s0
  (the NVDIMM is not in it), and savevm read no hole of the NVDIMM.
- w B R0, w B R1; HMP loadvm s1: the guest sees A in R0, zeros in R1 and
  A in BIG.  HMP delvm s1: gone from the image and from the qcow2 disk.
- QMP jobs: snapshot-save s2, w C R1, snapshot-load s2 (the guest sees the
  state of s2), snapshot-delete s2.
- loadvm of a tag whose pcow snapshot is gone (pcow-snapshot-delete)
  fails naming the image, and changes nothing.
- All or nothing: snapshot-save of a tag the pcow image already has (a
  live pcow snapshot) fails naming the image, and no qcow2 snapshot is
  left; snapshot-save of a tag pcow refuses (a control character) fails
  after the qcow2 snapshot was made: that one is deleted again.
- delvm s4 while the guest rewrites W in a loop (W's clusters shared
  with s4): the guest is paused around the pcow delete (STOP, RESUME
  events), and reads its last write to W afterwards.
- Host: the image is clean and holds s0 and the live snapshot only; the
  qcow2 disk holds s0 only.
- A second, read-only pcow NVDIMM (64 MiB, data in its first MiB) takes no
  part: no snapshot; the guest reads its data after every loadvm (its RAM
  is not in the vmstate either, which loadvm could not write back).
Env: QEMU, PCOW_IMG, QEMU_IMG (default: qemu-img next to QEMU).
Exit 0 pass, 77 skip (last line says why), 1 fail.
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
MiB, KiB, GiB = common.MiB, common.KiB, common.GiB

SIZE = 1 * GiB
DISK = {"vmstate": "disk0", "devices": ["disk0"]}     # the qcow2 node
REGIONS = {"R0": (1 * MiB, 64 * KiB), "R1": (300 * MiB, 64 * KiB),
           "BIG": (512 * MiB, 32 * MiB), "W": (700 * MiB, 4 * MiB)}
LOOP_OFF, LOOP_LEN = REGIONS["W"]

RO_SIZE = 64 * MiB                  # the read-only NVDIMM
RO_DATA = common.pattern("savevm-ro", 1 * MiB)

SCRIPT = common.GUEST_PRELUDE + rf"""
pm=/dev/$(pmem_of_size {SIZE}) || fail "no {SIZE}-byte pmem"
ro=/dev/$(pmem_of_size {RO_SIZE}) || fail "no {RO_SIZE}-byte pmem"
""" + r"""com2_ready && fail "COM2 holds data before the host sent any"
echo READY
while com2_getline; do
    set -- $line
    cmd=$1 tag=$2 reg=$3
    case "$cmd $reg" in
""" + "".join(
    f"""    "w {r}") yes "pcow-savevm $tag" | head -c {n} |
        dd of=$pm bs=65536 seek={off // 65536} iflag=fullblock \\
        oflag=direct conv=notrunc,fsync 2>/dev/null || fail "write $tag {r}"
        echo "WROTE $tag {r}" ;;
""" for r, (off, n) in REGIONS.items()) + r"""
    "c ") sync; echo 3 > /proc/sys/vm/drop_caches
        line=SEE
""" + "".join(
    f"""        line="$line {r}=$(dd if=$pm bs=65536 skip={off // 65536} \\
            count={n // 65536} iflag=direct 2>/dev/null |
            md5sum | cut -d' ' -f1)"
""" for r, (off, n) in REGIONS.items()) + r"""
        line="$line RO=$(dd if=$ro bs=65536 count=16 iflag=direct \
            2>/dev/null | md5sum | cut -d' ' -f1)"
        echo "$line" ;;
""" + rf"""    "l W") rm -f /tmp/stop /tmp/last
        ( i=0
          while [ ! -e /tmp/stop ]; do
            i=$((i + 1)); t=$tag$((i % 2))
            yes "pcow-savevm $t" | head -c {LOOP_LEN} |
            dd of=$pm bs=65536 seek={LOOP_OFF // 65536} iflag=fullblock \
                oflag=direct conv=notrunc,fsync 2>/dev/null || exit 1
            echo "$t $i" > /tmp/last
            [ $i = 1 ] && echo "LOOP1 $tag"
          done ) &
        loop=$! ;;
""" + r"""    "s ") touch /tmp/stop; wait $loop
        echo "STOPPED $(cat /tmp/last)" ;;
    "q ") echo BYE; exit 0 ;;
    esac
done
"""


def region_md5(tag, reg):
    n = REGIONS[reg][1]
    if tag is None:
        return common.md5(bytes(n))
    s = f"pcow-savevm {tag}\n".encode()
    return common.md5((s * (n // len(s) + 1))[:n])


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

    def write(self, tag, reg):
        self.send(f"w {tag} {reg}", rf"^WROTE {tag} {reg}$")

    def check(self, state, what):
        line = self.send("c", r"^SEE ")
        got = dict(kv.split("=") for kv in line.split()[1:])
        bad = [r for r in REGIONS if got.get(r) != region_md5(state.get(r), r)]
        if got.get("RO") != common.md5(RO_DATA):
            bad.append("RO (the read-only NVDIMM)")
        self.t.check(not bad, f"{what}: the guest reads "
                     f"{ {r: state.get(r) for r in REGIONS} }"
                     + (f" (wrong: {bad})" if bad else ""))

    def hmp(self, cmd):
        out = self.m.hmp(cmd)
        print(f"   (hmp) {cmd} -> {out.strip()!r}")
        return out

    def pcow(self):
        return next(p for p in self.m.execute("query-pcow")
                    if p["id"] == "pm0")

    def pcow_snaps(self):
        return [s["name"] for s in self.pcow()["snapshots"]]

    def vm_sizes(self):
        """{tag: VM SIZE in bytes} from HMP info snapshots"""
        sizes = {}
        mult = {"B": 1, "KiB": KiB, "MiB": MiB, "GiB": GiB}
        for ln in self.m.hmp("info snapshots").splitlines():
            m = re.match(r"\s*\S+\s+(\S+)\s+([\d.]+)\s+(B|KiB|MiB|GiB)\s", ln)
            if m:
                sizes[m.group(1)] = float(m.group(2)) * mult[m.group(3)]
        return sizes

    def job(self, cmd, **args):
        """Run a snapshot-* job to its end; returns its error or None."""
        return common.run_job(self.m, cmd, **args)


def main():
    t = common.Test("guest-savevm")
    qemu_img = os.environ.get("QEMU_IMG") or os.path.join(
        os.path.dirname(os.path.realpath(common.QEMU)), "qemu-img")
    img, disk = t.tmp / "pm.pcow", t.tmp / "disk.qcow2"
    ro, raw = t.tmp / "ro.pcow", t.tmp / "ro.raw"
    t.img("create", img, "1G")
    with open(raw, "wb") as f:
        f.write(RO_DATA)
        f.truncate(RO_SIZE)
    t.img("convert", "-O", "pcow", raw, ro)
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", str(disk),
                    "64M"], check=True)
    ctl = t.tmp / "ctl"
    args = common.nvdimm_args([img, (ro, "readonly=on", "unarmed=on")]) + [
        "-drive",
        f"if=none,id=d0,node-name=disk0,format=qcow2,file={disk}",
        "-chardev", f"socket,id=ctl,path={ctl},server=on,wait=off",
        "-device", "isa-serial,chardev=ctl,index=1"]
    g = guest.Guest(SCRIPT, args, **dict(common.GUEST_KW, qmp=True))
    with g:
        try:
            g.wait_for_line(r"^READY$")
            run(t, Vm(t, g, ctl))
        except (guest.GuestError, guest.QMPError, EOFError, OSError) as e:
            t.check(False, f"guest: {e}")
            print("\n".join("   # " + ln for ln in g.lines[-30:]))
        r = g.wait(timeout=120)
    t.boots.append(("guest", r))
    t.check(r.rc == 0, f"guest script exit {r.rc}")
    t.check_clean(img, "image after poweroff")
    t.check_clean(ro, "read-only image after poweroff")
    t.check(not t.info(ro).get("snapshots"), "the read-only image took no "
            "part: no snapshot")
    snaps = [s["name"] for s in t.info(img).get("snapshots", [])]
    t.check(snaps == ["s0", "live"], f"image snapshots after the test: "
            f"{snaps}, expected ['s0', 'live']")
    out = subprocess.run([qemu_img, "snapshot", "-l", str(disk)],
                         stdout=subprocess.PIPE, text=True).stdout
    tags = [ln.split()[1] for ln in out.splitlines()[2:] if ln.split()]
    t.check(tags == ["s0"], f"qcow2 disk: snapshots {tags} (qemu-img "
            "snapshot -l), expected only ['s0']")
    t.finish()


def run(t, vm):
    state = {}
    vm.check(state, "at boot")
    holes0 = vm.pcow()["statistics"]["hole-read-faults"]
    vm.hmp("savevm s0")             # reference: RAM and devices only
    for reg in ("R0", "BIG"):
        vm.write("A", reg)
        state[reg] = "A"
    out = vm.hmp("savevm s1")
    t.check(out.strip() == "", f"savevm s1 succeeded ({out.strip()!r})")
    holes = vm.pcow()["statistics"]["hole-read-faults"] - holes0
    t.check(holes < 64, f"savevm s0 and s1 read {holes} holes of the "
            "NVDIMM (none: the image holds it)")
    t.check("s1" in vm.pcow_snaps(),
            f"query-pcow lists snapshot s1 ({vm.pcow_snaps()})")
    sizes = vm.vm_sizes()
    grew = sizes.get("s1", 0) - sizes.get("s0", 0)
    t.note(f"VM SIZE s0 {sizes.get('s0', 0) / MiB:.1f} MiB, "
           f"s1 {sizes.get('s1', 0) / MiB:.1f} MiB")
    t.check("s1" in sizes and grew < REGIONS["BIG"][1] // 2,
            f"the vmstate grew by {grew / MiB:.1f} MiB from s0 to s1, "
            f"with {REGIONS['BIG'][1] // MiB} MiB written to the NVDIMM "
            "(the NVDIMM is not in it)")

    s1 = dict(state)
    vm.write("B", "R0")
    vm.write("B", "R1")
    vm.check({**s1, "R0": "B", "R1": "B"}, "after writing B")
    out = vm.hmp("loadvm s1")
    t.check(out.strip() == "", f"loadvm s1 succeeded ({out.strip()!r})")
    vm.check(s1, "after loadvm s1")
    vm.hmp("delvm s1")
    t.check("s1" not in vm.pcow_snaps() and "s1" not in vm.vm_sizes(),
            "delvm s1: gone from the pcow image and the qcow2 disk")

    # --- the QMP jobs
    err = vm.job("snapshot-save", tag="s2", **DISK)
    t.check(err is None and "s2" in vm.pcow_snaps(),
            f"snapshot-save s2: {err or 'ok'}, pcow {vm.pcow_snaps()}")
    vm.write("C", "R1")
    err = vm.job("snapshot-load", tag="s2", **DISK)
    st = vm.m.execute("query-status")["status"]
    t.check(err is None and st == "running",
            f"snapshot-load s2: {err or 'ok'}, VM {st}")
    if st != "running":
        vm.m.execute("cont")        # a failed load leaves the VM stopped
    vm.check(s1, "after snapshot-load s2")
    err = vm.job("snapshot-delete", tag="s2", devices=DISK["devices"])
    t.check(err is None and "s2" not in vm.pcow_snaps(),
            f"snapshot-delete s2: {err or 'ok'}, pcow {vm.pcow_snaps()}")

    # --- loadvm of a snapshot the image lacks: refused before any change
    vm.hmp("savevm s3")
    vm.m.execute("pcow-snapshot-delete", id="pm0", name="s3")
    vm.write("D", "R1")
    out = vm.hmp("loadvm s3")
    t.check("s3" in out and "does not exist in pcow image" in out and
            "pm.pcow" in out and "pm0" in out,
            f"loadvm of a snapshot the image lacks fails naming it: {out!r}")
    st = vm.m.execute("query-status")["status"]
    vm.m.execute("cont")            # HMP loadvm leaves a VM it stopped so
    vm.check({**s1, "R1": "D"}, f"... and changes nothing (VM was {st})")
    vm.hmp("delvm s3")
    vm.write("E", "R1")
    vm.check({**s1, "R1": "E"}, "guest writes go on")
    loadvm_during_migration(t, vm, {**s1, "R1": "E"})

    # --- delvm while the guest writes: clusters shared with the snapshot
    now = delvm_while_writing(t, vm, {**s1, "R1": "E"})

    # --- all or nothing
    vm.m.execute("pcow-snapshot-create", id="pm0", name="live")
    err = vm.job("snapshot-save", tag="live", **DISK)
    t.check(err is not None and "pm.pcow" in err and "pm0" in err and
            "already exists" in err,
            f"snapshot-save of a tag the image has fails naming it: {err}")
    t.check("live" not in vm.vm_sizes(), "... and no qcow2 snapshot 'live'")
    bad = "bad\x01tag"
    err = vm.job("snapshot-save", tag=bad, **DISK)
    t.check(err is not None and "pm.pcow" in err and "pm0" in err,
            f"snapshot-save of a tag pcow refuses fails naming it: {err}")
    t.check(sorted(vm.vm_sizes()) == ["s0"] and
            vm.pcow_snaps() == ["s0", "live"],
            f"... and nothing half-made: qcow2 {sorted(vm.vm_sizes())}, "
            f"pcow {vm.pcow_snaps()}")
    vm.check(now, "the guest runs on after the failed snapshots")
    vm.send("q", r"^BYE$")


def loadvm_during_migration(t, vm, state):
    """loadvm and delvm while a migration runs: refused (a revert remaps
    the NVDIMM behind the dirty log, a delete changes the metadata the
    destination maps from), the migration and the guest go on."""
    vm.m.execute("migrate-set-parameters", {"max-bandwidth": 1 * MiB})
    vm.m.execute("migrate", uri="exec:cat > /dev/null")
    out = vm.hmp("loadvm s0")
    out_del = vm.hmp("delvm s0")
    mig = vm.m.execute("query-migrate").get("status")
    vm.m.execute("migrate_cancel")
    deadline = time.monotonic() + 60
    while (vm.m.execute("query-migrate").get("status") != "cancelled" and
           time.monotonic() < deadline):
        time.sleep(0.2)
    st = vm.m.execute("query-status")["status"]
    if st != "running":
        vm.m.execute("cont")
    t.check("pm0" in out and "while a migration is in progress" in out,
            f"loadvm during a migration ({mig}) is refused naming the "
            f"backend: {out.strip()!r}")
    t.check("while a migration is in progress" in out_del and
            "s0" in vm.pcow_snaps() and "s0" in vm.vm_sizes(),
            f"delvm during a migration is refused, s0 kept: "
            f"{out_del.strip()!r}")
    vm.check(state, f"... and changes nothing (VM was {st})")


def delvm_while_writing(t, vm, state):
    """delvm of a snapshot whose clusters the image shares, while the guest
    rewrites them in a loop: the guest is paused around the pcow delete
    (STOP and RESUME), and reads its last write afterwards."""
    vm.write("F", "W")
    vm.hmp("savevm s4")             # W's clusters: shared with s4
    vm.send("l X W", r"^LOOP1 X$")
    vm.m.events.clear()
    out = vm.hmp("delvm s4")
    ev = [e["event"] for e in vm.m.events
          if e["event"] in ("STOP", "RESUME")]
    t.check(out.strip() == "" and "s4" not in vm.pcow_snaps(),
            f"delvm s4 while the guest writes: {out.strip()!r}, pcow "
            f"{vm.pcow_snaps()}")
    t.check(ev == ["STOP", "RESUME"], f"... the guest was paused around "
            f"the pcow delete (events {ev}, expected STOP, RESUME)")
    time.sleep(1)                   # writes go on after the delete
    last, n = vm.send("s", r"^STOPPED ").split()[1:]
    t.check(int(n) >= 2, f"the guest wrote W {n} times meanwhile")
    state = {**state, "W": last}
    vm.check(state, f"after delvm: W holds the last write ({last})")
    return state


if __name__ == "__main__":
    main()
