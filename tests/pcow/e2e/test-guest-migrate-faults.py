#!/usr/bin/env python3
"""A failed migration leaves the source running on an intact pcow image.

One TCG source guest (1 GiB pcow NVDIMM) writes a known 4 KiB block to a
fresh 64 KiB cluster every half second and keeps each block's md5.  The
host drives three failed migrations in turn, each at a low bandwidth so
that the guest writes while it is active:
 1. migrate to a file, migrate_cancel while active: "cancelled";
 2. migrate over a unix socket to a destination QEMU (-incoming, fresh
    1 GiB image) and SIGKILL the destination mid-stream: "failed" with an
    error description;
 3. migrate to a destination whose image is 512 MiB: the destination exits
    non-zero naming the size mismatch of the NVDIMM's RAM block; the
    source's migration fails.
After each, the source VM is running and, told on COM2 (polled, no
interrupt), the guest verifies every block written so far.  At the end the
guest verifies again and powers off; the image is clean and holds every
block.  Also: a raw file given as format=pcow is refused at startup with
one stderr line naming the file.
Env: QEMU, PCOW_IMG.  Exit 0 pass, 77 skip (last line says why), 1 fail.
"""

import importlib.util
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

BASE = 16 * MiB                   # block i is at BASE + i * STRIDE
STRIDE = 64 * KiB
MAX_ITER = 2000                   # 125 MiB: stays inside the image
BANDWIDTH = 1 * MiB               # slow enough to be mid-stream for seconds

SCRIPT = common.GUEST_PRELUDE + rf"""
blk() {{ yes "pcow-migfault block $1" | head -c 4096; }}
verify() {{
    bad=0
    while read j want; do
        got=$(dd if=/dev/pmem0 bs=4096 count=1 \
              skip=$(( ({BASE} + j * {STRIDE}) / 4096 )) 2>/dev/null |
              md5sum | cut -d" " -f1)
        [ "$want" = "$got" ] || {{ echo "MISMATCH $j"; bad=$((bad + 1)); }}
    done < /tmp/sums
    echo "VERIFIED $i BAD $bad"
}}
: > /tmp/sums
i=0
while [ $i -lt {MAX_ITER} ]; do
    if com2_ready; then
        com2_getline
        echo "GOT $line"
        [ "$line" = stop ] && break
        [ "$line" = verify ] && verify
    fi
    usleep 500000
    i=$((i + 1))
    blk $i > /tmp/blk
    dd if=/tmp/blk of=/dev/pmem0 bs=4096 count=1 \
        seek=$(( ({BASE} + i * {STRIDE}) / 4096 )) conv=notrunc,fsync \
        2>/dev/null || fail "dd write $i"
    echo "$i $(md5sum < /tmp/blk | cut -d" " -f1)" >> /tmp/sums
    echo "ITER $i"
done
verify
[ $bad -eq 0 ]
"""


def block(i):
    return common.migration_block("pcow-migfault", i)


def vm_args(img, ctl, mode="all"):
    """The test's VM on @img with migrate-data=@mode ("" for the default)."""
    obj = f"migrate-data={mode}" if mode else ""
    return common.nvdimm_args([(img, obj)]) + common.ctl_args(ctl)


def wait_streaming(m, nbytes, timeout=120):
    """Wait until the migration is active and sent @nbytes; its status."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = m.execute("query-migrate")
        sent = info.get("ram", {}).get("transferred", 0)
        st = info.get("status")
        if st not in ("setup", "active") or (st == "active" and
                                              sent >= nbytes):
            return st, sent
        time.sleep(0.2)
    return "timeout", 0


def wait_path(path, timeout=60):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.2)
    return os.path.exists(path)


class Source:
    """The source guest, its QMP and the host's end of its COM2."""

    def __init__(self, t, src, ctl):
        self.t, self.src, self.m, self.ctl = t, src, src.qmp(), ctl

    def after(self, case, info, want, before, midstream=True, desc=True):
        """Checks after a failed migration: status (with an error-desc if
        @desc), VM running, guest wrote during it (if it ran for a while:
        @midstream) and verifies every block."""
        t = self.t
        now = common.last_iter(self.src.lines)
        st = info.get("status")
        t.check(st == want, f"{case}: source migration ends {st!r} "
                f"(want {want!r})")
        if want == "failed" and desc:
            err = info.get("error-desc", "")
            t.note(f"{case}: error-desc: {err!r}")
            t.check(bool(err), f"{case}: query-migrate has an error-desc "
                    f"({err!r})")
        time.sleep(1)
        vm = self.m.execute("query-status")["status"]
        t.check(vm == "running", f"{case}: source VM {vm!r} after the "
                "migration (want 'running')")
        during = f"{case}: the guest wrote blocks during the migration " \
            f"({before} before, {now} at its end)"
        if midstream:
            t.check(now > before, during)
        else:
            t.note(during)
        self.ctl.sendall(b"verify\n")
        ln = self.src.wait_for_line(r"^VERIFIED ", timeout=180)
        m = re.match(r"VERIFIED (\d+) BAD (\d+)", ln)
        t.check(m and m.group(2) == "0" and int(m.group(1)) >= now,
                f"{case}: the guest on the source read back every block "
                f"written so far ({ln.strip()}; at least {now} blocks)")

    def start(self, uri):
        self.m.execute("migrate-set-parameters", {"max-bandwidth": BANDWIDTH})
        before = common.last_iter(self.src.lines)
        self.m.execute("migrate", uri=uri)
        return before


def case_cancel(t, s):
    case = "cancel"
    before = s.start(f"exec:cat > {t.tmp / 'state'}")
    st, sent = wait_streaming(s.m, 3 * MiB)
    t.check(st == "active", f"{case}: migration active when cancelled "
            f"({st}, {sent} bytes sent)")
    s.m.execute("migrate_cancel")
    s.after(case, common.wait_migration(s.m), "cancelled", before)


def destination(t, img, tag, kw, mode="all", extra=()):
    sock = t.tmp / f"mig-{tag}.sock"
    dst = guest.Guest(common.GUEST_PRELUDE,
                      vm_args(img, t.tmp / f"ctl-{tag}", mode) + list(extra) +
                      ["-incoming", f"unix:{sock}"], **kw)
    dst.start()
    if not wait_path(sock):
        dst.kill()
        t.fatal(f"{tag}: destination did not listen on {sock} within 60 s "
                f"({dst.wait().qemu_stderr.strip()})")
    return dst, f"unix:{sock}"


def case_kill_dst(t, s, kw):
    case = "destination killed"
    b = t.tmp / "b.pcow"
    t.img("create", b, "1G")
    dst, uri = destination(t, b, "kill", kw)
    with dst:
        before = s.start(uri)
        st, sent = wait_streaming(s.m, 3 * MiB)
        t.check(st == "active", f"{case}: migration active when the "
                f"destination was killed ({st}, {sent} bytes sent)")
        dst.kill()
        r = dst.wait(timeout=30)
    t.check(r.qemu_rc == -9, f"{case}: destination QEMU died of SIGKILL "
            f"(returncode {r.qemu_rc})")
    s.after(case, common.wait_migration(s.m), "failed", before)


def case_wrong_size(t, s, kw):
    case = "destination 512 MiB"
    c = t.tmp / "c.pcow"
    t.img("create", c, "512M")
    dst, uri = destination(t, c, "small", kw)
    with dst:
        before = s.start(uri)
        info = common.wait_migration(s.m)
        r = dst.wait(timeout=60)
    err = r.qemu_stderr.strip()
    t.note(f"{case}: destination stderr: {err!r}")
    t.check(r.qemu_rc not in (None, 0) and not r.killed,
            f"{case}: destination QEMU exited by itself, non-zero "
            f"(returncode {r.qemu_rc})")
    t.check(re.search(r"Size mismatch: pm0: 0x40000000 != 0x20000000", err),
            f"{case}: destination stderr names the size mismatch of "
            "block pm0, 0x40000000 != 0x20000000")
    s.after(case, info, "failed", before, midstream=False)
    t.check_clean(c, f"{case}: destination image after its exit")


def case_raw(t):
    """A raw file as format=pcow: refused at startup, one line."""
    raw = t.tmp / "raw.img"
    with open(raw, "wb") as f:
        f.truncate(64 * MiB)
    cmd = [common.QEMU, "-machine", "pc,nvdimm=on,accel=tcg",
           "-m", "512M,slots=4,maxmem=8G", "-nodefaults", "-display", "none",
           "-incoming", "defer"] + common.nvdimm_args([raw])
    try:
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, timeout=60)
    except subprocess.TimeoutExpired:
        t.check(False, "raw destination: QEMU still running after 60 s")
        return
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    t.note(f"raw destination: stderr: {r.stderr.strip()!r}")
    t.check(r.returncode == 1, f"raw destination: QEMU exit {r.returncode} "
            "(want 1)")
    t.check(len(lines) == 1 and str(raw) in lines[0] and
            "not a pcow image" in lines[0],
            f"raw destination: one stderr line naming {raw}, 'not a pcow "
            f"image' ({len(lines)} lines)")
    t.check(common.md5_file(raw) == common.md5(bytes(64 * MiB)),
            "raw destination: the raw file is still all zeros")


def main():
    t = common.Test("guest-migrate-faults")
    case_raw(t)
    a = t.tmp / "a.pcow"
    t.img("create", a, "1G")
    kw = dict(common.GUEST_KW, qmp=True)
    kw["timeout"] = 900
    ran = []
    src = guest.Guest(SCRIPT, vm_args(a, t.tmp / "ctl-src"), **kw)
    with src:
        try:
            src.wait_for_line(r"^ITER 3$")
            ctl = socket.socket(socket.AF_UNIX)
            ctl.connect(str(t.tmp / "ctl-src"))
            s = Source(t, src, ctl)
            case_cancel(t, s)
            ran.append("cancel")
            case_kill_dst(t, s, kw)
            ran.append("kill")
            case_wrong_size(t, s, kw)
            ran.append("size")
            ctl.sendall(b"stop\n")
            src.wait_for_line(r"^GOT stop$", timeout=120)
            r = src.wait(timeout=300)
            ctl.close()
        except (guest.GuestError, guest.QMPError, EOFError, OSError) as e:
            t.fatal(f"source: {e} (cases done: {ran})")
    t.boots.append(("source", r))
    t.check(ran == ["cancel", "kill", "size"], f"all three cases ran ({ran})")
    text = "\n".join(r.lines)
    fin = re.findall(r"^VERIFIED (\d+) BAD (\d+)", text, re.M)
    n = common.last_iter(r.lines)
    t.check(r.rc == 0 and fin and fin[-1] == (str(n), "0"),
            f"source guest: final check of all {n} blocks, exit {r.rc} "
            f"({fin[-1] if fin else 'no VERIFIED line'})")
    t.check_clean(a, "source image after poweroff")
    raw = t.to_raw(a)
    bad = [i for i in range(1, n + 1)
           if common.read_at(raw, BASE + i * STRIDE, 4096) != block(i)]
    t.check(n > 0 and not bad, f"source image: blocks 1..{n} at their "
            "offsets" + (f" (wrong: {bad[:10]})" if bad else ""))
    raw.unlink()
    t.finish()


if __name__ == "__main__":
    main()
