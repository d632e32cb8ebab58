#!/usr/bin/env python3
"""Shared storage and save/restore: the image is handed over, not sent (TCG).

migrate-data=none (the default): the destination maps the source's own
image, which the source hands over at switchover (docs/pcow.rst, "VM
lifecycle").  The guest of test-guest-migrate-faults.py writes a known
4 KiB block to a fresh 64 KiB cluster of its 1 GiB pcow NVDIMM every half
second, keeps their md5s, and verifies them all when told on COM2.

1. Destination that cannot take the image: a second QEMU on another
   image, b.pcow, of the same size.  The migration (return-path on) fails
   at switchover, the destination exits non-zero with one line saying the
   image is not the state's, b.pcow is byte for byte unchanged, and the
   source takes its image back by itself and runs on: the guest verifies
   every block.
2. A destination on a.pcow itself that fails after it took the image (on
   a device the source has and it lacks): it gives the image back with
   the stamp it found, and the source takes it back by itself and runs on.
3. Shared storage: a destination QEMU on a.pcow itself, started while the
   source runs (it does not open the image until switchover).  No page of
   the NVDIMM is sent (the stream's RAM total is less than the NVDIMM's
   size).  The destination's guest verifies every block, written before
   and during the migration, and keeps writing.  The source cannot take
   the image back: cont fails, naming it, and the VM stays paused.
4. Save and restore: a fresh VM on a.pcow saves to a file
   (exec:cat > FILE) and quits; the state file holds no page of the NVDIMM
   (its RAM blocks do not include the NVDIMM's).  A restore from it
   verifies every block; savevm, loadvm and delvm work on the restored
   VM, which verifies again and writes on.  A second restore from the
   same file is refused (exit 1, one line: the image changed since the state was
   saved), and the image is still clean with every block.
Env: QEMU, PCOW_IMG.  Exit 0 pass, 77 skip (last line says why), 1 fail.
"""

import importlib.util
import os
import re
import socket
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


faults = load("faults", os.path.join(HERE, "test-guest-migrate-faults.py"))
common = faults.common
guest = common.guest
GiB, MiB = common.GiB, common.MiB
SIZE = 1 * GiB
# A device with migration state that the late-failure destination lacks
EXTRA = ["-device", "ib700"]


def connect(path):
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(path))
    return s


def verify(t, g, ctl, what, at_least):
    """Tell the guest on @ctl to verify; check every block read back."""
    ctl.sendall(b"verify\n")
    ln = g.wait_for_line(r"^VERIFIED ", timeout=180)
    m = re.match(r"VERIFIED (\d+) BAD (\d+)", ln)
    t.check(m and m.group(2) == "0" and int(m.group(1)) >= at_least,
            f"{what}: the guest read back every block written so far "
            f"({ln.strip()}; at least {at_least})")


def stop(g, ctl):
    ctl.sendall(b"stop\n")
    g.wait_for_line(r"^GOT stop$", timeout=120)
    r = g.wait(timeout=300)
    ctl.close()
    return r


def start(s, uri):
    """Migrate the source to @uri at 256 MiB/s (its RAM, no NVDIMM page);
    the last iteration before."""
    s.m.execute("migrate-set-parameters", {"max-bandwidth": 256 * MiB})
    before = common.last_iter(s.src.lines)
    s.m.execute("migrate", uri=uri)
    return before


def case_wrong_image(t, s, kw):
    case = "destination on another image"
    b = t.tmp / "b.pcow"
    t.img("create", b, "1G")
    before_md5 = common.md5_file(b)
    dst, uri = faults.destination(t, b, "other", kw, mode="")
    with dst:
        before = start(s, uri)
        info = common.wait_migration(s.m)
        r = dst.wait(timeout=60)
    err = r.qemu_stderr.strip()
    t.note(f"{case}: destination stderr: {err!r}")
    t.check(r.qemu_rc not in (None, 0) and not r.killed,
            f"{case}: destination QEMU exited by itself, non-zero "
            f"(returncode {r.qemu_rc})")
    t.check(re.search(r"memory backend 'pm0': .*b\.pcow.*changed since "
                      r"this state was saved", err),
            f"{case}: destination stderr says b.pcow is not the image the "
            "state belongs to")
    t.check(common.md5_file(b) == before_md5,
            f"{case}: b.pcow byte for byte unchanged")
    # The destination said only "failed" on the return path: no reason
    s.after(case, info, "failed", before, midstream=False, desc=False)


def wait_totals(m):
    """query-migrate at the end of the migration, and the largest RAM
    total it reported while active (after it, left-out blocks count
    again)."""
    most = 0
    while True:
        info = m.execute("query-migrate")
        if info.get("status") == "active":
            most = max(most, info.get("ram", {}).get("total", 0))
        if info.get("status") in ("completed", "failed", "cancelled"):
            return info, most
        time.sleep(0.05)


def ram_block_names(data):
    """The RAM block names in a migration stream's RAM setup section, near
    its start (each: length byte, name, 8-byte size); "pc.ram" is one."""
    names = set()
    for m in re.finditer(rb"([\x03-\x7f])([\x20-\x7e]{3,127})\x00\x00",
                         data[:64 * 1024]):
        if len(m.group(2)) == m.group(1)[0]:
            names.add(m.group(2).decode())
    return names


def case_late_failure(t, s, a, kw):
    """The destination takes the image, then fails on a device the source
    has and it lacks: it gives the image back unchanged, and the source,
    told on the return path, takes it back and runs on."""
    case = "destination fails after the handover"
    dst, uri = faults.destination(t, a, "late", kw, mode="")
    with dst:
        before = start(s, uri)
        info = common.wait_migration(s.m)
        r = dst.wait(timeout=60)
    err = r.qemu_stderr.strip()
    t.note(f"{case}: destination stderr: {err!r}")
    t.check(r.qemu_rc not in (None, 0) and not r.killed and
            "ib700" in err and "pcow" not in err,
            f"{case}: the destination failed on the device it lacks, not "
            f"on the image (exit {r.qemu_rc})")
    s.after(case, info, "failed", before, midstream=False, desc=False)


def case_shared(t, s, a, kw):
    case = "shared storage"
    dst, uri = faults.destination(t, a, "shared", kw, mode="", extra=EXTRA)
    with dst:
        try:
            before = start(s, uri)
            info, total = wait_totals(s.m)
            st = info.get("status")
            ram = info.get("ram", {})
            now = common.last_iter(s.src.lines)
            t.check(st == "completed", f"{case}: source migration {st}")
            t.note(f"{case}: RAM total while active {total}, transferred "
                   f"{ram.get('transferred')}; iterations {before} -> {now}")
            t.check(0 < total < SIZE, f"{case}: the NVDIMM's RAM block is "
                    f"not in the stream (RAM total {total} < {SIZE})")
            err = ""
            try:
                s.m.execute("cont")
            except guest.QMPError as e:
                err = str(e)
            t.note(f"{case}: cont on the source: {err!r}")
            t.check(re.search(r"cannot take back the pcow image '[^']*"
                              r"a\.pcow': image is in use", err) and
                    err.count("a.pcow") == 1,
                    f"{case}: cont on the source fails naming the image "
                    "once: the image is the destination's now")
            vm = s.m.execute("query-status")["status"]
            t.check(vm == "postmigrate", f"{case}: source stays paused "
                    f"({vm})")
            s.m.execute("quit")
            s.src.wait(timeout=60)
            s.ctl.close()
            dctl = connect(t.tmp / "ctl-shared")
            verify(t, dst, dctl, f"{case}: destination", now)
            r = stop(dst, dctl)
        except (guest.GuestError, guest.QMPError, EOFError, OSError) as e:
            t.fatal(f"{case}: {e}")
    t.boots.append((case, r))
    n = common.last_iter(r.lines)
    t.check(r.rc == 0 and n > now, f"{case}: the destination's guest wrote "
            f"on ({now} -> {n}) and passed its final check (exit {r.rc})")
    return n


def save(t, a, state, kw):
    """A fresh VM on @a saves to @state; the blocks it wrote."""
    src = guest.Guest(faults.SCRIPT, faults.vm_args(a, t.tmp / "ctl-save",
                                                    ""), **kw)
    with src:
        try:
            src.wait_for_line(r"^ITER 5$")
            m = src.qmp()
            m.execute("migrate", uri=f"exec:cat > {state}")
            info = common.wait_migration(m)
            n = common.last_iter(src.lines)
            m.execute("quit")
            r = src.wait(timeout=60)
        except (guest.GuestError, guest.QMPError, EOFError, OSError) as e:
            t.fatal(f"save: {e}")
    t.boots.append(("save", r))
    t.check(info.get("status") == "completed",
            f"save: migration to a file {info.get('status')}")
    size = os.path.getsize(state)
    names = ram_block_names(state.read_bytes())
    t.note(f"save: state file {size} bytes, RAM blocks {sorted(names)}")
    t.check(size < SIZE // 4 and "pc.ram" in names and
            not any(x.endswith("pm0") and not x.startswith("pcow-image/")
                    for x in names),
            f"save: the state file ({size} bytes) holds no NVDIMM page: "
            "its RAM blocks are pc.ram and others, not pm0")
    return n


def restore_cmd(a, state, tag, t):
    return faults.vm_args(a, t.tmp / f"ctl-{tag}", "") + \
        ["-incoming", f"exec:cat {state}"]


def case_save_restore(t, a, kw):
    state = t.tmp / "state"
    n = save(t, a, state, kw)
    dst = guest.Guest(common.GUEST_PRELUDE, restore_cmd(a, state, "rst", t),
                      **kw)
    with dst:
        try:
            m = dst.qmp(timeout=60)
            st = common.wait_migration(m)["status"]
            t.check(st == "completed", f"restore: incoming migration {st}")
            ctl = connect(t.tmp / "ctl-rst")
            verify(t, dst, ctl, "restore", n)
            # Internal snapshots of the restored VM (QEMU aborted in
            # loadvm when the load left its RAM bookkeeping behind)
            for cmd in ("savevm s9", "loadvm s9", "delvm s9"):
                out = m.hmp(cmd).strip()
                t.check(out == "", f"restore: {cmd} on the restored VM "
                        f"({out!r})")
            verify(t, dst, ctl, "restore, after loadvm", n)
            r = stop(dst, ctl)
        except (guest.GuestError, guest.QMPError, EOFError, OSError) as e:
            t.fatal(f"restore: {e}")
    t.boots.append(("restore", r))
    t.check(r.rc == 0, f"restore: guest exit {r.rc}")
    m2 = common.last_iter(r.lines)

    # the image changed since the save: a second restore is refused
    before_md5 = common.md5_file(a)
    g = guest.Guest(common.GUEST_PRELUDE, restore_cmd(a, state, "rst2", t),
                    **kw)
    with g:
        p = g.wait(timeout=120)
    err = p.qemu_stderr.strip()
    t.note(f"second restore: exit {p.qemu_rc}, stderr {err!r}")
    t.check(p.qemu_rc == 1 and not p.killed and re.search(
        r"memory backend 'pm0': .*a\.pcow.*changed since this state was "
        r"saved", err), "second restore: refused with exit 1, naming the "
        "image that changed since the state was saved")
    t.check(common.md5_file(a) == before_md5,
            "second restore: a.pcow byte for byte unchanged")
    return m2


def main():
    t = common.Test("guest-migrate-shared")
    a = t.tmp / "a.pcow"
    t.img("create", a, "1G")
    kw = dict(common.GUEST_KW, qmp=True)
    kw["timeout"] = 900
    src = guest.Guest(faults.SCRIPT, faults.vm_args(a, t.tmp / "ctl-src", "") +
                      EXTRA, **kw)
    with src:
        try:
            src.wait_for_line(r"^ITER 3$")
            s = faults.Source(t, src, connect(t.tmp / "ctl-src"))
            s.m.execute("migrate-set-capabilities", capabilities=[
                {"capability": "return-path", "state": True}])
            case_wrong_image(t, s, kw)
            case_late_failure(t, s, a, kw)
            n = case_shared(t, s, a, kw)
        except (guest.GuestError, guest.QMPError, EOFError, OSError) as e:
            t.fatal(f"source: {e}")
    t.check_clean(a, "a.pcow after the shared-storage migration")
    m = case_save_restore(t, a, kw)
    t.check_clean(a, "a.pcow after the refused restore")
    raw = t.to_raw(a)
    bad = [i for i in range(1, max(n, m) + 1)
           if common.read_at(raw, faults.BASE + i * faults.STRIDE, 4096) !=
           faults.block(i)]
    t.check(not bad, f"a.pcow: blocks 1..{max(n, m)} at their offsets" +
            (f" (wrong: {bad[:10]})" if bad else ""))
    raw.unlink()
    t.finish()


if __name__ == "__main__":
    main()
