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
Then, as khugepaged does in time where transparent huge pages are
"always" (e.g. RHEL), every anonymous mapping of each QEMU is collapsed
into huge pages (process_madvise MADV_COLLAPSE: needs CAP_SYS_NICE, else
this part is not run and says so), and the pcow bounds above must still
hold: the clean bitmap blocks must not be THP-eligible (a page malloc
wrote in each made the whole bitmap resident).
Env: QEMU, PCOW_IMG.  Exit 0 pass, 77 skip (last line says why), 1 fail.
"""

import ctypes
import errno
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


def vm_rss(pid):
    for ln in Path(f"/proc/{pid}/status").read_text().splitlines():
        if ln.startswith("VmRSS:"):
            return int(ln.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def collapse(pid):
    """What khugepaged does, in time, where THP is "always": collapse each
    anonymous mapping of pid (up to 16 GiB: not the NVDIMM's reservation)
    into huge pages.  None when the kernel or our privileges do not let
    us (the reason in COLLAPSE_WHY)."""
    global COLLAPSE_WHY
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    pidfd = libc.syscall(434, pid, 0)                   # pidfd_open
    if pidfd < 0:
        COLLAPSE_WHY = f"pidfd_open: {os.strerror(ctypes.get_errno())}"
        return None
    done = 0
    try:
        for ln in Path(f"/proc/{pid}/maps").read_text().splitlines():
            f = ln.split()
            if len(f) > 5 and f[5] != "[heap]":
                continue                                # file, stack, vdso
            lo, hi = (int(x, 16) for x in f[0].split("-"))
            if hi - lo > 16 * GiB:
                continue
            iov = _Iovec(lo, hi - lo)
            r = libc.syscall(440, pidfd, ctypes.byref(iov), 1, 25, 0)
            e = ctypes.get_errno()
            if r < 0 and e in (errno.EPERM, errno.ENOSYS):
                COLLAPSE_WHY = f"process_madvise(MADV_COLLAPSE): " \
                               f"{os.strerror(e)}"
                return None
            done += r >= 0
    finally:
        os.close(pidfd)
    if not done:
        # Nothing collapsed: the check would compare uncollapsed RSS again
        COLLAPSE_WHY = "process_madvise(MADV_COLLAPSE) collapsed no mapping"
        return None
    return done


COLLAPSE_WHY = ""


def rss_at_open(tmp, img, fmt, size, accel, collapsed=None):
    """VmRSS (bytes) of QEMU paused with one NVDIMM on img; with a dict
    collapsed, its VmRSS after collapse() in collapsed["rss"] (None when
    collapse() could not run)."""
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
        rss = vm_rss(q.pid)
        print(f"     {accel} {fmt} {size // GiB} GiB: {st}, "
              f"VmRSS {rss / MiB:.1f} MiB")
        if collapsed is not None:
            collapsed["rss"] = None
            if collapse(q.pid) is not None:
                collapsed["rss"] = vm_rss(q.pid)
                print(f"     {accel} {fmt} {size // GiB} GiB: VmRSS "
                      f"{collapsed['rss'] / MiB:.1f} MiB after collapse")
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
            cb, cg = {}, {}
            base = rss_at_open(tmp, imgs["pcow", GiB], "pcow", GiB, accel, cb)
            big = rss_at_open(tmp, imgs["pcow", BIG], "pcow", BIG, accel, cg)
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
            if cb["rss"] is None or cg["rss"] is None:
                print(f"     (the collapse check is not run: {COLLAPSE_WHY})")
                continue
            grew = cg["rss"] - cb["rss"]
            most = 2 * BITMAP if accel == "tcg" else BITMAP // 2
            check(grew < most,
                  f"pcow, {accel.upper()}, every anonymous mapping collapsed "
                  f"into huge pages (khugepaged, THP \"always\"): 4 TiB "
                  f"NVDIMM adds {grew / MiB:.1f} MiB, below {most // MiB} MiB")
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
