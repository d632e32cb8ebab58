#!/usr/bin/env python3
"""QEMU's memory at open of a huge pcow NVDIMM (issue 16, item 10).

Upstream's ram_block_add() marks a new RAM block dirty for all three dirty
memory clients (VGA, TCG code, migration), which makes all three dirty
bitmaps resident: 32 MiB each per TiB of RAM.  A pcow NVDIMM starts clean
(patches/0013-physmem-let-a-RAM-block-start-clean.patch) except for the
code client under TCG, whose bits TCG needs.

For each accelerator (TCG always; KVM when /dev/kvm can be opened), QEMU
starts paused (-S) with one NVDIMM on a thin 4 TiB image and on a 1 GiB
one; once QMP answers, VmRSS from /proc/PID/status.  With B = one client's
bitmap for 4 TiB (128 MiB) and growth = RSS(4 TiB) - RSS(1 GiB):
  pcow, TCG:  0.5 B <= growth < 2 B    (the code bitmap only; was 3 B)
  pcow, KVM:  growth < 0.5 B           (no bitmap; was 3 B)
  raw, TCG:   growth >= 2.5 B          (upstream unchanged: the measure
                                        sees the bitmaps)
Env: QEMU, PCOW_IMG.  Exit 0 pass, 77 skip (last line says why), 1 fail.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[0] / "guest"))
import guest  # noqa: E402  (its QMP client)

MiB = 1 << 20
GiB = 1 << 30
BIG = 4096 * GiB
BITMAP = BIG // 4096 // 8          # one client's bitmap: 128 MiB
QEMU = os.environ.get("QEMU", "")
PCOW_IMG = os.environ.get("PCOW_IMG", "")
failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    sys.stdout.flush()
    if not cond:
        failures.append(what)


def rss_at_open(tmp, img, fmt, size, accel):
    """VmRSS (bytes) of QEMU paused with one NVDIMM on img."""
    sock = tmp / "qmp.sock"
    sock.unlink(missing_ok=True)
    cmd = [QEMU, "-S", "-machine", "pc,nvdimm=on", "-accel", accel,
           "-cpu", "qemu64,phys-bits=48",
           "-m", f"256M,slots=2,maxmem={size // GiB + 1}G",
           "-display", "none", "-nodefaults",
           "-qmp", f"unix:{sock},server=on,wait=off",
           "-object", f"memory-backend-file,id=pm,mem-path={img},"
           f"format={fmt},share=on,size={size}",
           "-device", "nvdimm,id=nv0,memdev=pm"]
    q = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True)
    try:
        deadline = time.monotonic() + 120
        while not sock.exists():
            if q.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"QEMU ({accel}, {fmt}) exited "
                                   f"{q.returncode}: {q.stderr.read().strip()}")
            time.sleep(0.05)
        # A QMP answer means qemu_init() is done: the backend and the
        # NVDIMM exist.
        with guest.QMP(sock, timeout=120) as m:
            st = m.execute("query-status")["status"]
        for ln in Path(f"/proc/{q.pid}/status").read_text().splitlines():
            if ln.startswith("VmRSS:"):
                rss = int(ln.split()[1]) * 1024
        print(f"     {accel} {fmt} {size // GiB} GiB: {st}, "
              f"VmRSS {rss / MiB:.1f} MiB")
        return rss
    finally:
        q.kill()
        q.wait()


def kvm_usable():
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR))
        return True
    except OSError:
        return False


def main():
    for what, path in (("QEMU", QEMU), ("PCOW_IMG", PCOW_IMG)):
        if not (path and os.access(path, os.X_OK)):
            print(f"SKIP: {what} is not set to an executable ('{path}')")
            return 77
    tmp = Path(tempfile.mkdtemp(prefix="pcow-qemu-rss."))
    try:
        imgs = {}
        for fmt, size in (("pcow", GiB), ("pcow", BIG), ("raw", GiB),
                          ("raw", BIG)):
            p = tmp / f"nv-{size // GiB}g.{fmt}"
            if fmt == "pcow":
                subprocess.run([PCOW_IMG, "create", "-q", str(p), str(size)],
                               check=True)
            else:
                with open(p, "wb") as f:
                    f.truncate(size)    # sparse: no disk used
            imgs[fmt, size] = p
        print(f"== B (one dirty bitmap for 4 TiB) = {BITMAP // MiB} MiB")
        accels = ["tcg"] + (["kvm"] if kvm_usable() else [])
        if "kvm" not in accels:
            print("     (no usable /dev/kvm: the KVM case is not run)")
        for accel in accels:
            base = rss_at_open(tmp, imgs["pcow", GiB], "pcow", GiB, accel)
            big = rss_at_open(tmp, imgs["pcow", BIG], "pcow", BIG, accel)
            grew = big - base
            if accel == "tcg":
                check(BITMAP // 2 <= grew < 2 * BITMAP,
                      f"pcow, TCG: 4 TiB NVDIMM adds {grew / MiB:.1f} MiB "
                      f"to RSS: the code bitmap only, between "
                      f"{BITMAP // 2 // MiB} and {2 * BITMAP // MiB} MiB "
                      f"(all three bitmaps: {3 * BITMAP // MiB} MiB)")
            else:
                check(grew < BITMAP // 2,
                      f"pcow, KVM: 4 TiB NVDIMM adds {grew / MiB:.1f} MiB "
                      f"to RSS, below {BITMAP // 2 // MiB} MiB (no dirty "
                      f"bitmap resident; all three: {3 * BITMAP // MiB} MiB)")
        base = rss_at_open(tmp, imgs["raw", GiB], "raw", GiB, "tcg")
        big = rss_at_open(tmp, imgs["raw", BIG], "raw", BIG, "tcg")
        grew = big - base
        check(grew >= 5 * BITMAP // 2,
              f"raw, TCG: 4 TiB NVDIMM adds {grew / MiB:.1f} MiB to RSS, at "
              f"least {5 * BITMAP // 2 // MiB} MiB (upstream: the three "
              f"bitmaps; shows the measure sees them)")
    except (RuntimeError, OSError, subprocess.CalledProcessError,
            guest.GuestError, guest.QMPError, EOFError) as e:
        check(False, f"setup: {e}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if failures:
        print(f"== qemu-rss: {len(failures)} FAILED")
        return 1
    print("== qemu-rss: PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
