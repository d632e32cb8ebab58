#!/usr/bin/env python3
"""VMs started from clones of a template's snapshot, without booting (TCG;
issue 12).

Template VM: guest RAM on a 512 MiB pcow image (-machine memory-backend=
ram0) and a 64 MiB pcow NVDIMM (pm0), no disk.  Its guest prints
"TICK n" on the console once a second and answers commands on COM2:
"w TAG" writes MARK-TAG at offset M of the NVDIMM (O_DIRECT) and into
/tmp/marker (tmpfs, guest RAM), "c" prints both and the counter, "q"
exits.
- HMP savevm gold while the counter runs (the VM state goes into ram0's
  image); the last tick before it is T0; the counter read on COM2 after
  it is C, so the snapshot's counter is in [T0, C] and a guest resumed
  from it prints its first tick in (T0, C + 1], however slow the host;
  quit.
- pcow-img clone of both images, four times; md5 of the template files.
- The four clones start at once, each with the template's command line
  but its own images and -loadvm gold; clone 0 also with -S:
  right after the load, query-pcow shows 0 active bytes in both of its
  images (nothing of the template was read or copied) and its RAM
  image's statistics show 0 expansions and 0 COW copies (the resets
  before the load copied no ROM blob into RAM).  Then cont.
- Each clone's first tick is in (T0, C + 1] and it never prints the
  guest's start line (it did not boot); its query-pcow active bytes stay
  far below the template's RAM data.
- Each clone writes its own marker and reads back only its own.
- SIGKILL clone 3: the others run on and read their own markers again.
- Clone 1 (cloned with relative names, in the test directory): once its
  counter is above C + 1, the counter read just before HMP loadvm gold is
  B; after it a tick below B comes (the counter went back; ticks still in
  flight from before are >= B) and it is in (T0, C + 1]; no marker.
  delvm gold and savevm gold are refused with one line naming the
  clone's image once and the template by its resolved path (and nothing
  is left half-made).
- Clone 2: a snapshot of its own named gold on the NVDIMM image only
  (QMP pcow-snapshot-create) while the RAM image answers to gold as its
  origin: loadvm gold is refused in one line naming both images and
  changes nothing (RAM and NVDIMM would come from different snapshots).
  With gold in both of its images (no VM state) the own snapshots take
  precedence over the origin: loadvm gold fails for want of VM state and
  changes nothing.
- Clone 1 again: system_reset (reboot action "reset") boots its guest:
  start line and TICK 1 (the resets before its -loadvm and loadvm copied
  no ROM blob into RAM, but kept the -kernel ELF's for this one).
- Quit: the template files hash as before; pcow-img check passes on the
  template and the surviving clones; the killed clone's check has no
  corruption (what it says is printed).
- Control: a clone started without -loadvm boots (prints the start line
  and TICK 1): so the "did not boot" check can fail.
- -loadvm gold on a clone of a snapshot made by pcow-img (no VM state):
  QEMU exits 1 with one line naming the clone's image.
- -loadvm gold on clones of the template whose NVDIMM image has a gold
  of its own (pcow-img snapshot): QEMU exits 1 with one line naming both
  images, and never gets to answer on QMP.
No bound depends on how fast the host is: every wait has a generous
timeout, and no check counts ticks between two host-side events.
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

RAM = 512 * MiB
PM = 64 * MiB
M_BLOCK = 256                       # marker at 256 * 4 KiB of the NVDIMM
N = 4
KW = dict(common.GUEST_KW, timeout=900, qmp=True)

SCRIPT = common.GUEST_PRELUDE + rf"""
pm=/dev/$(pmem_of_size {PM}) || fail "no {PM}-byte pmem"
( i=0
  while :; do i=$((i + 1)); echo $i > /tmp/cnt; echo "TICK $i"; sleep 1
  done ) &
echo READY
while com2_getline; do
    set -- $line
    case "$1" in
    w) printf 'MARK-%s' "$2" |
       dd of=$pm bs=4096 seek={M_BLOCK} count=1 conv=sync,notrunc \
          oflag=direct 2>/dev/null || fail "write $2"
       echo "MARK-$2" > /tmp/marker
       echo "WROTE $2" ;;
    c) nv=$(dd if=$pm bs=4096 skip={M_BLOCK} count=1 iflag=direct \
            2>/dev/null | tr -d '\000')
       tf=$(cat /tmp/marker 2>/dev/null)
       echo "SEE ${{nv:-none}} ${{tf:-none}} $(cat /tmp/cnt)" ;;
    q) echo BYE; exit 0 ;;
    esac
done
"""


def vm_args(ram, pm, ctl, extra=()):
    """The same command line for the template and every clone: only the
    image files, the control socket and -loadvm/-S differ."""
    return (["-object", f"memory-backend-file,id=ram0,mem-path={ram},"
             "format=pcow,share=on", "-machine", "memory-backend=ram0"] +
            common.nvdimm_args([pm]) + common.ctl_args(ctl) + list(extra))


class Vm:
    """A guest, its control port and its QMP."""

    def __init__(self, name, ram, pm, ctl, extra=()):
        self.name, self.ram, self.pm, self.ctl_path = name, ram, pm, ctl
        self.g = guest.Guest(SCRIPT, vm_args(ram, pm, ctl, extra), **KW)
        self.ctl = self.m = None

    def start(self):
        self.g.start()
        return self

    def connect(self):
        self.m = self.g.qmp(timeout=300)     # -loadvm of 4 at once
        self.m.sock.settimeout(600)     # savevm under TCG on a busy host
        self.ctl = socket.socket(socket.AF_UNIX)
        deadline = time.monotonic() + 300
        while True:
            try:
                self.ctl.connect(str(self.ctl_path))
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def send(self, line, expect, timeout=300):
        self.ctl.sendall(line.encode() + b"\n")
        return self.g.wait_for_line(expect, timeout=timeout)

    def see(self):
        """(NVDIMM marker, tmpfs marker, counter)"""
        _, nv, tf, cnt = self.send("c", r"^SEE ").split()
        return nv, tf, int(cnt)

    def hmp(self, cmd):
        out = self.m.hmp(cmd)
        print(f"   ({self.name} hmp) {cmd} -> {out.strip()!r}")
        return out

    def pcow(self):
        return {p["id"]: p for p in self.m.execute("query-pcow")}

    def ticks(self, since=0):
        """The ticks printed from console line @since on"""
        return [int(m.group(1)) for m in
                (re.match(r"TICK (\d+)$", ln.strip())
                 for ln in self.g.lines[since:]) if m]

    def next_tick(self, timeout=300):
        """The next tick after the console line last waited for"""
        return int(self.g.wait_for_line(r"^TICK \d+$",
                                        timeout=timeout).split()[1])

    def tick_below(self, bound, timeout=300):
        """The first tick from here on below @bound (ticks at or above it
        are skipped; GuestError if none comes within @timeout)"""
        deadline = time.monotonic() + timeout
        while True:
            n = self.next_tick(max(deadline - time.monotonic(), 0.1))
            if n < bound:
                return n


def template(t, tram, tpm):
    """Boot the template, savevm gold while it ticks: (T0, C), the last
    tick seen before the savevm and the counter read after it"""
    vm = Vm("template", tram, tpm, t.tmp / "ctl-t").start()
    with vm.g:
        vm.g.wait_for_line(r"^READY$")
        vm.connect()
        while vm.next_tick() < 3:
            pass
        t0 = max(vm.ticks())
        out = vm.hmp("savevm gold")
        _, _, c = vm.see()      # asked after the savevm: >= its counter
        t1 = vm.next_tick()     # printed after that reply: > T0
        t.check(out.strip() == "" and c >= t0 and t1 > t0,
                f"template: savevm gold while the counter runs "
                f"({out.strip()!r}): last tick before it {t0}, counter "
                f"after it {c}, next tick {t1}")
        vm.m.execute("quit")
        r = vm.g.wait(timeout=120)
    t.boots.append(("template", r))
    info = {s["name"]: s for s in t.info(tram).get("snapshots", [])}
    t.check(info.get("gold", {}).get("vm-state-size", 0) > 0,
            f"template: gold holds the VM state in the RAM image "
            f"({info.get('gold', {}).get('vm-state-size')} bytes)")
    return t0, c


def start_checks(t, vm, t0, c, tram_bytes):
    """A clone resumed: ticks above T0, no boot, little copied"""
    first = vm.next_tick()
    boot = [ln for ln in vm.g.lines if guest.START_MARK in ln]
    t.check(t0 < first <= c + 1 and not boot,
            f"{vm.name}: first tick {first} continues the snapshot's "
            f"counter (T0 {t0}, C {c}); start line printed: {bool(boot)}")
    p = vm.pcow()
    ram_act = p["ram0"]["active-bytes"]
    st = p["ram0"]["statistics"]
    t.check(ram_act < tram_bytes // 4,
            f"{vm.name}: RAM image holds {ram_act / MiB:.1f} MiB of its own "
            f"(the template's RAM image {tram_bytes / MiB:.1f} MiB): "
            f"expansions {st['expansions']}, COW units "
            f"{st['cow-unit-faults']}, COW clusters "
            f"{st['cow-cluster-faults']}")


def main():
    t = common.Test("guest-clones")
    tram, tpm = t.tmp / "tram.pcow", t.tmp / "tpm.pcow"
    t.img("create", tram, str(RAM))
    t.img("create", tpm, str(PM))
    t0, c = template(t, tram, tpm)
    tram_bytes = t.clusters(tram) * t.info(tram)["cluster-size"]
    rams = [t.tmp / f"c{i}-ram.pcow" for i in range(N)]
    pms = [t.tmp / f"c{i}-pm.pcow" for i in range(N)]
    for i in range(N):
        if i == 1:      # relative names: delvm's error resolves them
            t.img("clone", "-q", f"{tram.name}@gold", rams[i].name,
                  cwd=t.tmp)
        else:
            t.img("clone", "-q", f"{tram}@gold", rams[i])
        t.img("clone", "-q", f"{tpm}@gold", pms[i])
    hashes = {p: common.md5_file(p) for p in (tram, tpm)}

    vms = [Vm(f"clone{i}", rams[i], pms[i], t.tmp / f"ctl-{i}",
              ["-loadvm", "gold"] + (["-S"] if i == 0 else []))
           for i in range(N)]
    try:
        for vm in vms:
            vm.start()
        clones(t, vms, t0, c, tram_bytes)
    except (guest.GuestError, guest.QMPError, EOFError, OSError,
            KeyError, ValueError) as e:
        t.check(False, f"clones: {e}")
    for vm in vms:
        # After "q" the guest powers off; a QEMU left running (a failure)
        # gets quit, and is killed only if that does not end it
        if vm.g.proc and vm.g.proc.poll() is None and vm.m:
            try:
                vm.g.proc.wait(30)
            except subprocess.TimeoutExpired:
                try:
                    vm.m.execute("quit")
                except (guest.QMPError, EOFError, OSError):
                    pass
        r = vm.g.wait(timeout=120)
        t.boots.append((vm.name, r))
        if r.qemu_stderr.strip():
            print(f"   {vm.name} qemu stderr: {r.qemu_stderr.strip()}")
        print("\n".join(f"   {vm.name} | " + ln for ln in r.lines[-8:]))

    after(t, hashes, rams, pms)
    control(t, tram, tpm)
    no_vm_state(t)
    mix_at_start(t, tram, tpm)
    t.finish()


def clones(t, vms, t0, c, tram_bytes):
    # clone 0 waits at -S: the load alone, before the guest runs
    v0 = vms[0].connect()
    st = v0.m.execute("query-status")["status"]
    p = v0.pcow()
    t.check(st in ("prelaunch", "paused") and
            p["ram0"]["active-bytes"] == 0 and
            p["pm0"]["active-bytes"] == 0,
            f"clone0 at -S after -loadvm gold ({st}): active bytes RAM "
            f"{p['ram0']['active-bytes']}, NVDIMM "
            f"{p['pm0']['active-bytes']} (0: nothing read or copied)")
    # The resets before the load copy no ROM blob (the -kernel ELF) into
    # RAM (patch 0023): nothing was written, not even to be dropped
    s = p["ram0"]["statistics"]
    t.check(s["expansions"] == 0 and s["cow-unit-faults"] == 0 and
            s["cow-cluster-faults"] == 0,
            f"clone0 before it runs: RAM expansions {s['expansions']}, COW "
            f"units {s['cow-unit-faults']}, COW clusters "
            f"{s['cow-cluster-faults']} (0: the resets wrote nothing); "
            f"NVDIMM expansions {p['pm0']['statistics']['expansions']}")
    v0.m.execute("cont")
    for vm in vms[1:]:
        vm.connect()
    for vm in vms:
        start_checks(t, vm, t0, c, tram_bytes)

    for i, vm in enumerate(vms):
        vm.send(f"w c{i}", rf"^WROTE c{i}$")
    for i, vm in enumerate(vms):
        nv, tf, _ = vm.see()
        t.check(nv == f"MARK-c{i}" and tf == f"MARK-c{i}",
                f"{vm.name} reads its own markers only: NVDIMM {nv}, "
                f"tmpfs {tf}")

    killed = vms[3]
    killed.g.kill()
    killed.g.wait(timeout=60)
    t.check(killed.g.proc.returncode == -9,
            f"clone3 killed with SIGKILL (QEMU rc {killed.g.proc.returncode})")
    time.sleep(2)
    for i, vm in enumerate(vms[:3]):
        before = vm.ticks()[-1]
        nv, tf, _ = vm.see()
        after_t = vm.next_tick()
        t.check(nv == f"MARK-c{i}" and tf == f"MARK-c{i}" and
                after_t > before,
                f"{vm.name} runs on after clone3's SIGKILL (tick {before} "
                f"-> {after_t}) and still reads {nv}, {tf}")

    loadvm_back(t, vms[1], t0, c)
    v1 = vms[1]
    for cmd in ("delvm gold", "savevm gold"):
        out = v1.hmp(cmd)
        lines = out.strip().splitlines()
        t.check(len(lines) == 1 and out.count("c1-ram.pcow") == 1 and
                "'ram0'" in out and "cannot delete snapshot 'gold'" in out
                and f"this clone was made from (in {tram_of(v1)})" in out,
                f"clone1: {cmd} refused in one line naming the clone "
                f"once and the template by its path: {out.strip()!r}")
    st = v1.m.execute("query-status")["status"]
    snaps = {k: [s["name"] for s in p["snapshots"]]
             for k, p in v1.pcow().items()}
    nv, tf, _ = v1.see()
    t.check(st == "running" and snaps == {"ram0": [], "pm0": []} and
            nv == "none",
            f"clone1 runs on ({st}); no snapshot made or lost ({snaps})")
    own_first(t, vms[2])
    reboot(t, v1)
    for vm in vms[:3]:
        vm.send("q", r"^BYE$")


def reboot(t, vm):
    """A reset after -loadvm and loadvm boots the guest: the resets before
    the loads skipped the -kernel ELF's blobs but kept them"""
    mark = len(vm.g.lines)
    vm.m.execute("set-action", reboot="reset")     # the guests run -no-reboot
    vm.m.execute("system_reset")
    try:
        vm.g.wait_for_line(r"^READY$", timeout=600)
        vm.next_tick()
    except guest.GuestError as e:
        t.check(False, f"{vm.name}: no boot after system_reset: {e}")
        return
    boot = [ln for ln in vm.g.lines[mark:] if guest.START_MARK in ln]
    # ticks from before the reset may still arrive after the mark (all
    # far above 1), and TICK 1 may come before READY: the lowest counts
    first = min(vm.ticks(mark))
    t.check(boot and first == 1,
            f"{vm.name}: system_reset after -loadvm and loadvm boots the "
            f"guest again (start line {bool(boot)}, first tick {first})")


def tram_of(vm):
    """The template RAM image, as its path resolves"""
    return vm.ram.parent / "tram.pcow"


def loadvm_back(t, vm, t0, c):
    """loadvm gold on a running clone takes its counter back.  Ticks
    printed before the loadvm may still be in flight afterwards: they are
    all >= B, the counter read just before it, which is made to exceed
    every value the resumed counter starts from (<= C + 1)"""
    while vm.next_tick() <= c + 1:
        pass
    _, _, b = vm.see()
    out = vm.hmp("loadvm gold")
    back = vm.tick_below(b)
    nv, tf, cnt = vm.see()
    t.check(out.strip() == "" and t0 < back <= c + 1 and cnt >= t0 and
            nv == "none" and tf == "none",
            f"{vm.name}: loadvm gold ({out.strip()!r}) brings it back: "
            f"counter {b} before it, first tick below that {back} (T0 "
            f"{t0}, C {c}); markers {nv}, {tf}; counter then {cnt}")


def failed_loadvm(vm, cmd):
    out = vm.hmp(cmd)
    if vm.m.execute("query-status")["status"] != "running":
        vm.m.execute("cont")        # a failed loadvm leaves the VM stopped
    nv, tf, _ = vm.see()
    return out.strip(), nv, tf


def own_first(t, vm):
    """gold of the clone's own on one image, the origin on the other: a
    loadvm would take the NVDIMM from one snapshot and the RAM from
    another, and is refused.  Own snapshots on both win over the origin:
    loadvm then finds no VM state in them (the origin has some)"""
    vm.m.execute("pcow-snapshot-create", id="pm0", name="gold")
    out, nv, tf = failed_loadvm(vm, "loadvm gold")
    t.check(len(out.splitlines()) == 1 and out.count("c2-pm.pcow") == 1
            and out.count("c2-ram.pcow") == 1 and
            "'pm0'" in out and "'ram0'" in out and
            "refusing to load" in out and nv == tf == "MARK-c2",
            f"{vm.name}: gold its own on pm0, the origin on ram0: loadvm "
            f"gold refused in one line naming both: {out!r}; nothing "
            f"changed ({nv}, {tf})")
    vm.m.execute("pcow-snapshot-create", id="ram0", name="gold")
    out, nv, tf = failed_loadvm(vm, "loadvm gold")
    t.check(len(out.splitlines()) == 1 and out.count("c2-ram.pcow") == 1
            and "it holds no VM state" in out and nv == tf == "MARK-c2",
            f"{vm.name}: its own snapshots 'gold' (no VM state) take "
            f"precedence over the origin: loadvm gold {out!r}; "
            f"nothing changed ({nv}, {tf})")
    for bk in ("ram0", "pm0"):
        vm.m.execute("pcow-snapshot-delete", id=bk, name="gold")


def after(t, hashes, rams, pms):
    for p, h in hashes.items():
        t.check(common.md5_file(p) == h,
                f"template file {p.name} unchanged (md5 {h})")
        t.check_clean(p, f"template {p.name}")
    for i in range(3):
        t.check_clean(rams[i], f"clone{i} RAM image")
        t.check_clean(pms[i], f"clone{i} NVDIMM image")
    for p in (rams[3], pms[3]):
        r = t.img("check", "--output=json", p, check=False)
        try:
            res = json.loads(r.stdout)
        except ValueError:
            res = {}
        t.check(res.get("corruptions", -1) == 0,
                f"killed clone3's {p.name}: check finds no corruption "
                f"(exit {r.returncode}; leaks {res.get('leaks')}): "
                f"{r.stdout.strip()[:300]}")


def control(t, tram, tpm):
    """Without -loadvm a clone boots: the check on the start line bites"""
    ram, pm = t.tmp / "ctl-ram.pcow", t.tmp / "ctl-pm.pcow"
    t.img("clone", "-q", f"{tram}@gold", ram)
    t.img("clone", "-q", f"{tpm}@gold", pm)
    vm = Vm("control", ram, pm, t.tmp / "ctl-c").start()
    with vm.g:
        try:
            vm.g.wait_for_line(r"^READY$", timeout=600)
            vm.next_tick()
            # TICK 1 may come before READY (the counter starts first)
            first = min(vm.ticks())
            boot = [ln for ln in vm.g.lines if guest.START_MARK in ln]
            t.check(boot and first == 1,
                    f"control: a clone started without -loadvm boots "
                    f"(start line {bool(boot)}, first tick {first})")
            vm.connect().m.execute("quit")
        except (guest.GuestError, guest.QMPError, EOFError, OSError) as e:
            t.check(False, f"control: {e}")
        r = vm.g.wait(timeout=120)
    t.boots.append(("control", r))


def no_vm_state(t):
    """-loadvm of an origin taken without QEMU fails in one line"""
    tmpl, c = t.tmp / "novm.pcow", t.tmp / "novm-c.pcow"
    t.img("create", tmpl, str(RAM))
    t.img("snapshot", "-c", "gold", tmpl)
    t.img("clone", "-q", f"{tmpl}@gold", c)
    g = guest.Guest(SCRIPT, ["-object", f"memory-backend-file,id=ram0,"
                             f"mem-path={c},format=pcow,share=on",
                             "-machine", "memory-backend=ram0",
                             "-loadvm", "gold"],
                    **dict(KW, timeout=600, qmp=False))
    with g:
        r = g.wait(timeout=600)
    err = r.qemu_stderr.strip()
    t.check(r.qemu_rc == 1 and len(err.splitlines()) == 1 and
            "novm-c.pcow" in err and "the template's snapshot holds no VM "
            "state (taken without QEMU?)" in err,
            f"-loadvm of an origin without VM state: QEMU exit "
            f"{r.qemu_rc}: {err!r}")


def mix_at_start(t, tram, tpm):
    """-loadvm of a name that one image has as its own snapshot and the
    other as its origin fails before the guest runs"""
    ram, pm = t.tmp / "mix-ram.pcow", t.tmp / "mix-pm.pcow"
    t.img("clone", "-q", f"{tram}@gold", ram)
    t.img("clone", "-q", f"{tpm}@gold", pm)
    t.img("snapshot", "-c", "gold", pm)
    vm = Vm("mix", ram, pm, t.tmp / "ctl-m", ["-loadvm", "gold"]).start()
    started = False
    deadline = time.monotonic() + 600
    with vm.g:
        # QMP answers only once the main loop runs, i.e. the load went on
        while vm.g.proc.poll() is None and time.monotonic() < deadline:
            try:
                vm.g.qmp(timeout=5).execute("quit")
                started = True
                break
            except (guest.GuestError, guest.QMPError, EOFError, OSError):
                time.sleep(0.5)
        r = vm.g.wait(timeout=120)
    err = r.qemu_stderr.strip()
    t.check(not started and r.qemu_rc == 1 and len(err.splitlines()) == 1
            and err.count("mix-ram.pcow") == 1 and
            err.count("mix-pm.pcow") == 1 and "refusing to load" in err,
            f"-loadvm gold, gold its own on the NVDIMM image only: QEMU "
            f"exit {r.qemu_rc} (ran: {started}): {err!r}")


if __name__ == "__main__":
    main()
