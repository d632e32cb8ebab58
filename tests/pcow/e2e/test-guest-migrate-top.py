#!/usr/bin/env python3
"""Migration onto an overlay of the same base: only the top image moves (TCG).

migrate-data=top (docs/pcow.rst, "VM lifecycle").  base.pcow holds 256 MiB
of data (converted from a raw file); the source runs on src.pcow, an
overlay of it, with the guest of test-guest-migrate-faults.py writing a
4 KiB block to a fresh 64 KiB cluster every half second.

1. Destination on an overlay of *another* base with the same content
   (other.pcow, converted from the same raw file, so a different state
   stamp): refused at setup, before any page, with one line naming the
   image; the source runs on and its guest verifies every block; the
   destination's overlay received no data.
2. Destination on a copy of the source's overlay (same base, but data of
   its own): refused before any page, naming the image; the source runs on.
3. Destination on dst.pcow, a fresh overlay of base.pcow: the migration
   completes having sent less than half of the base's data (the base's
   clusters are not sent; RAM and the guest's blocks are); the
   destination's guest verifies every block and writes on.  Afterwards
   dst.pcow shows the base's data and every block, is clean, and holds
   less than 64 MiB of its own (it stayed thin: the base's data was not
   copied into it).
Env: QEMU, PCOW_IMG.  Exit 0 pass, 77 skip (last line says why), 1 fail.
"""

import importlib.util
import os
import re
import shutil
import socket

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
DATA_OFF = 512 * MiB            # the base's data: beyond the guest's blocks
DATA_LEN = 256 * MiB


def make_bases(t):
    raw = t.tmp / "base.raw"
    with open(raw, "wb") as f:
        f.truncate(1 * GiB)
        f.seek(DATA_OFF)
        for i in range(DATA_LEN // MiB):
            f.write(common.pattern(("base", i), MiB))
    for name in ("base.pcow", "other.pcow"):
        t.img("convert", "-f", "raw", "-O", "pcow", raw, t.tmp / name)
    raw.unlink()
    for name, base in (("src.pcow", "base.pcow"), ("dst.pcow", "base.pcow"),
                       ("dst2.pcow", "other.pcow")):
        t.img("create", "-b", t.tmp / base, "-F", "pcow", t.tmp / name)


def own_bytes(t, img):
    """Bytes of data @img holds itself (its active clusters of 64 KiB)."""
    return t.clusters(img) * 64 * 1024


def case_other_base(t, s, kw):
    case = "overlay of another base"
    dst2 = t.tmp / "dst2.pcow"
    dst, uri = faults.destination(t, dst2, "other", kw, mode="top")
    with dst:
        before = s.start(uri)
        info = common.wait_migration(s.m)
        r = dst.wait(timeout=60)
    err = r.qemu_stderr.strip()
    t.note(f"{case}: destination stderr: {err!r}")
    t.check(r.qemu_rc not in (None, 0) and not r.killed,
            f"{case}: destination QEMU exited non-zero ({r.qemu_rc})")
    t.check(re.search(r"memory backend 'pm0': the bases of pcow image "
                      r"'.*dst2\.pcow' are not the source's", err),
            f"{case}: destination stderr names the image whose bases differ")
    sent = info.get("ram", {}).get("transferred", 0)
    t.note(f"{case}: the source sent {sent} bytes")
    s.after(case, info, "failed", before, midstream=False)
    t.check(own_bytes(t, dst2) == 0, f"{case}: dst2.pcow received no data")
    t.check_clean(dst2, f"{case}: dst2.pcow after its exit")


def case_not_fresh(t, s, kw):
    """An overlay of the same base that holds data of its own (a copy of
    the source's overlay, taken while it runs): refused before any page."""
    case = "overlay with data of its own"
    dst3 = t.tmp / "dst3.pcow"
    shutil.copy(t.tmp / "src.pcow", dst3)
    dst, uri = faults.destination(t, dst3, "notfresh", kw, mode="top")
    with dst:
        before = s.start(uri)
        info = common.wait_migration(s.m)
        r = dst.wait(timeout=60)
    err = r.qemu_stderr.strip()
    t.note(f"{case}: destination stderr: {err!r}")
    t.check(r.qemu_rc not in (None, 0) and not r.killed and
            re.search(r"memory backend 'pm0': pcow image '.*dst3\.pcow' "
                      r"holds data of its own", err),
            f"{case}: the destination refuses it, naming the image "
            f"(exit {r.qemu_rc})")
    s.after(case, info, "failed", before, midstream=False)


def case_same_base(t, s, kw):
    case = "overlay of the same base"
    dsti = t.tmp / "dst.pcow"
    dst, uri = faults.destination(t, dsti, "top", kw, mode="top")
    with dst:
        try:
            s.m.execute("migrate-set-parameters",
                        {"max-bandwidth": 64 * MiB})
            before = common.last_iter(s.src.lines)
            s.m.execute("migrate", uri=uri)
            info = common.wait_migration(s.m)
            now = common.last_iter(s.src.lines)
            ram = info.get("ram", {})
            t.check(info.get("status") == "completed",
                    f"{case}: migration {info.get('status')}")
            t.note(f"{case}: transferred {ram.get('transferred')} bytes, "
                   f"{ram.get('normal')} normal pages; iterations "
                   f"{before} -> {now}")
            t.check(0 < ram.get("transferred", 0) < DATA_LEN // 2,
                    f"{case}: sent {ram.get('transferred')} bytes, less than "
                    f"half the base's {DATA_LEN} (its clusters are not sent)")
            s.m.execute("quit")
            s.src.wait(timeout=60)
            s.ctl.close()
            ctl = socket.socket(socket.AF_UNIX)
            ctl.connect(str(t.tmp / "ctl-top"))
            ctl.sendall(b"verify\n")
            ln = dst.wait_for_line(r"^VERIFIED ", timeout=180)
            ctl.sendall(b"stop\n")
            dst.wait_for_line(r"^GOT stop$", timeout=120)
            r = dst.wait(timeout=300)
            ctl.close()
        except (guest.GuestError, guest.QMPError, EOFError, OSError) as e:
            t.fatal(f"{case}: {e}")
    t.boots.append((case, r))
    m = re.match(r"VERIFIED (\d+) BAD (\d+)", ln)
    t.check(m and m.group(2) == "0" and int(m.group(1)) >= now,
            f"{case}: the destination's guest read back every block "
            f"({ln.strip()}; at least {now})")
    n = common.last_iter(r.lines)
    t.check(r.rc == 0 and n > now, f"{case}: the guest wrote on ({now} -> "
            f"{n}) and passed its final check (exit {r.rc})")
    t.check_clean(dsti, f"{case}: dst.pcow after poweroff")
    own = own_bytes(t, dsti)
    t.check(own < 64 * MiB, f"{case}: dst.pcow holds {own} bytes of its own "
            "(< 64 MiB: the base's data stayed in the base)")
    raw = t.to_raw(dsti)
    bad = [i for i in range(1, n + 1)
           if common.read_at(raw, faults.BASE + i * faults.STRIDE, 4096) !=
           faults.block(i)]
    t.check(not bad, f"{case}: dst.pcow has blocks 1..{n}" +
            (f" (wrong: {bad[:10]})" if bad else ""))
    badm = [i for i in range(DATA_LEN // MiB)
            if common.read_at(raw, DATA_OFF + i * MiB, MiB) !=
            common.pattern(("base", i), MiB)]
    t.check(not badm, "dst.pcow shows the base's data" +
            (f" (wrong MiB: {badm[:10]})" if badm else ""))
    raw.unlink()


def main():
    t = common.Test("guest-migrate-top")
    make_bases(t)
    kw = dict(common.GUEST_KW, qmp=True)
    kw["timeout"] = 900
    src = guest.Guest(faults.SCRIPT,
                      faults.vm_args(t.tmp / "src.pcow", t.tmp / "ctl-src",
                                     "top"), **kw)
    with src:
        try:
            src.wait_for_line(r"^ITER 3$")
            ctl = socket.socket(socket.AF_UNIX)
            ctl.connect(str(t.tmp / "ctl-src"))
            s = faults.Source(t, src, ctl)
            s.m.execute("migrate-set-capabilities", capabilities=[
                {"capability": "return-path", "state": True}])
            case_other_base(t, s, kw)
            case_not_fresh(t, s, kw)
            case_same_base(t, s, kw)
        except (guest.GuestError, guest.QMPError, EOFError, OSError) as e:
            t.fatal(f"source: {e}")
    t.finish()


if __name__ == "__main__":
    main()
